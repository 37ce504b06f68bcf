"""The augmentation comparison: does CVAE synthesis help a segmenter trained with few labels?

1. train the CVAE on the domain's labelled volumes, the held-out inferior slab excluded;
2. draw ``sample.n_per_label`` synthetic pairs from each (slab-free) training label map, deformed;
3. train two identical MONAI U-Nets for ``augment.seg_iters`` iterations: on real patches only,
   and on real + synthetic patches (``augment.synthetic_fraction`` of them synthetic);
4. Dice per class of both on the held-out slab of every volume (never seen by any model);
5. sample quality: per-class intensities against the real data, label fidelity (the real-only
   segmenter on the samples against their conditioning labels), diversity.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from monai.transforms import FgBgToIndicesd

from medgan.data.transforms import PatchDataset, held_out_slices, to_canonical
from medgan.inference import sliding_window
from medgan.io import Volume, read_label_map, read_volume
from medgan.keys import Keys
from medgan.metrics import dice_per_class
from medgan.networks import build_segmenter
from medgan.training.segmenter import fit_segmenter
from medgan.viz import save_orthogonal_slices
from medgan.pipelines.cvae.config import CVAEConfig
from medgan.pipelines.cvae.sample import CVAESampler, sample_quality
from medgan.pipelines.cvae.trainer import labelled_volumes, train_cvae
from medgan.pipelines.data_config import domain_preprocessor

logger = logging.getLogger(__name__)


def run_augmentation(config: CVAEConfig, checkpoint: str | Path | None = None, progress: bool = False) -> dict:
    """Run steps 1-5 (step 1 skipped when ``checkpoint`` is given); writes ``augmentation.json``
    and ``samples.png`` to ``train.output_dir`` and returns the report."""
    t, a = config.train, config.augment
    out = Path(t.output_dir)
    if config.train.holdout_fraction <= 0:
        raise ValueError("train.holdout_fraction must be > 0: the comparison is measured on the held-out slab")
    ckpt = Path(checkpoint) if checkpoint else train_cvae(config, progress=progress)
    sampler = CVAESampler(ckpt, t.device)
    real, _ = labelled_volumes(config)
    torch.manual_seed(t.seed)

    synthetic, groups = [], []
    for g, vol in enumerate(real):
        for k in range(config.sample.n_per_label):
            img, lab = sampler.sample_canonical(vol[Keys.LABEL.value].float(), seed=t.seed + 1000 * g + k)
            item = {Keys.IMAGE.value: img.float(), Keys.LABEL.value: lab.long(), Keys.HAS_LABEL.value: True}
            synthetic.append(FgBgToIndicesd(keys=Keys.LABEL.value)(item))
            groups.append(g)
    save_orthogonal_slices(out / "samples.png", [
        ("real", real[0][Keys.IMAGE.value][0].numpy(), real[0][Keys.LABEL.value][0].numpy()),
        *[(f"sample {k}", s[Keys.IMAGE.value][0].numpy(), s[Keys.LABEL.value][0].numpy()) for k, s in enumerate(synthetic[:3])],
    ], t.spacing_mm)

    k_classes = len(config.classes) + 1
    n_seg = a.seg_iters * 2
    real_ds = PatchDataset(real, t.patch_size, seed=t.seed + 7, length=n_seg, pos=t.crop_pos, neg=t.crop_neg)
    syn_ds = PatchDataset(synthetic, t.patch_size, seed=t.seed + 8, length=n_seg, pos=t.crop_pos, neg=t.crop_neg)
    models = {}
    for name, sets, weights in (("real only", [real_ds], [1.0]),
                                ("real + synthetic", [real_ds, syn_ds], [1 - a.synthetic_fraction, a.synthetic_fraction])):
        torch.manual_seed(t.seed)
        model = build_segmenter(3, 1, k_classes, a.seg_features)
        fit_segmenter(model, sets, weights, a.seg_iters, a.seg_lr, batch_size=t.batch_size, seed=t.seed, device=sampler.device)
        models[name] = model.eval()

    # held-out slab of every labelled volume, in the training frame
    pre = domain_preprocessor(config.domain, t.spacing_mm, config.classes)
    inf = config.inference
    roi = inf.roi_size or t.patch_size
    dice: dict[str, list[dict]] = {n: [] for n in models}
    for e in config.domain.data.datalist():
        if not e.get("label"):
            continue
        vol = read_volume(e["image"])
        image, _ = pre.image(vol)
        raw = read_label_map(e["label"], vol)
        lab = to_canonical(Volume(pre.label_mapper(raw.array, raw.path).astype(np.float32), raw.affine, raw.path),
                           t.spacing_mm, "nearest")[0].numpy().round().astype(np.int64)
        k = held_out_slices(lab.shape[-1], t.holdout_fraction)
        for name, model in models.items():
            pred = sliding_window(model, image.as_tensor()[None], roi, inf.overlap, inf.sw_batch_size, inf.blend,
                                  device=sampler.device, precision=inf.precision).argmax(1)[0].numpy()
            dice[name].append(dice_per_class(pred[..., :k], lab[..., :k], config.classes))

    def mean(rows: list[dict]) -> dict[str, float]:
        return {c: float(np.nanmean([r[c] for r in rows])) for c in config.classes if any(not math.isnan(r[c]) for r in rows)}

    held = {n: mean(rows) for n, rows in dice.items()}
    with torch.no_grad():
        predicted = [sliding_window(models["real only"], s[Keys.IMAGE.value][None], roi, inf.overlap, inf.sw_batch_size,
                                    inf.blend, device=sampler.device, precision=inf.precision).argmax(1)[0].numpy() for s in synthetic]
    to_units = sampler.scaling.inverse
    quality = sample_quality(
        [to_units(s[Keys.IMAGE.value][0].numpy()) for s in synthetic], [s[Keys.LABEL.value][0].numpy() for s in synthetic],
        [to_units(v[Keys.IMAGE.value][0].numpy()) for v in real], [v[Keys.LABEL.value][0].numpy() for v in real],
        config.classes, predicted=predicted, groups=groups)
    report = {"checkpoint": str(ckpt), "holdout_fraction": t.holdout_fraction, "synthetic_pairs": len(synthetic),
              "heldout_dice": held, "heldout_dice_mean": {n: float(np.nanmean(list(v.values()))) for n, v in held.items()},
              "sample_quality": quality}
    (out / "augmentation.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
