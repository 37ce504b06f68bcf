"""The multi-subject domain-adaptation benchmark: every method trained on the same data, every
held-out target subject scored, one table (``medgan benchmark CONFIG``).

Rows (the same segmenter architecture, spacing and patch size in each):

- **no adaptation**: ADDA's source stage, a segmenter trained on CT, applied to MR;
- **plain CycleGAN**: ``lambda_shape = 0``: S_MR learns from CT translated to MR with the CT's labels;
- **shape-consistent CycleGAN** (Zhang, Yang & Zheng, CVPR 2018): joint training;
  both CycleGAN rows then fine-tune their segmenters on volumes the frozen generators translate
  for ``seg_iters`` iterations, the segmenter-only budget every other row gets too;
- **ADDA** (Tzeng et al., CVPR 2017): the source segmenter's encoder adapted to MR;
- **pixel + feature level** (CyCADA-style, Hoffman et al., ICML 2018): ADDA whose source is the CT
  translated to MR by the shape-consistent CycleGAN;
- **self-training**: the shape-consistent model's S_MR labels the (unlabelled) training MRs and
  the same segmenter is trained on those pseudo-labels (the self-training stage of SDC-UDA, CVPR
  2023, and of FLARE CT -> MR entries; hard labels, no confidence filtering); **plain CycleGAN +
  self-training** the same with the plain model's S_MR as the teacher;
- **shape-consistent CycleGAN on pseudo-labelled MR** (opt-in, ``cyclegan_shape_pseudo``): the
  plain model's pseudo-labels on the training MRs, and a shape-consistent CycleGAN trained with
  them, so its S_MR learns real MR and both shape terms have labels;
- **supervised upper bound**: the same segmenter trained on the training MRs' own labels.

Unsupervised rows train on unlabelled training MRs (not even their crops are centred with the
labels). Each segmentation row is scored by Dice and HD95 (mm) per organ on every test MR; the
CycleGAN rows (and a histogram-matching baseline) also give the synthetic CT of every test MR,
scored by per-organ median HU against the labelled real CT and by S_CT's Dice on it.

A rerun into the same ``output_dir`` reuses each CycleGAN row's final checkpoint of the same
config, and with only ``seg_iters`` changed resumes its fine-tuning from the checkpoint at the end
of its joint iterations (:func:`reusable_cyclegan`): the rows are those of a run from scratch
(deterministic, and a resumed run continues exactly), without retraining the joint stage.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np

from medgan import __version__
from medgan.config import apply_override, dump_config, load_config
from medgan.data.datalist import datalist_from_folder
from medgan.data.labels import LabelMapper
from medgan.io import atomic_write_text, read_label_map, read_volume, strip_image_suffix
from medgan.metrics import dice_per_class, hd95_per_class
from medgan.pipelines.benchmark.config import PSEUDO_LABELLED_CYCLEGAN, ROW_TITLES, SELF_TRAINING_TEACHER, BenchmarkConfig, Side

logger = logging.getLogger(__name__)


def _side(side: Side, files: list[dict], name: str | None = None) -> dict:
    return {"name": name or side.name, "intensity": side.intensity.model_dump(mode="json"),
            "labels": side.labels.model_dump(mode="json"), "data": {"files": files},
            "augment": side.augment.model_dump(mode="json")}


def _pseudo_side(cfg: BenchmarkConfig, pseudo: list[dict]) -> dict:
    """The target side of a training on pseudo-label maps, which hold class indices 1..K in the
    order of ``cfg.classes`` (:func:`pseudo_labels`)."""
    return {**_side(cfg.target, pseudo), "labels": {"ids": {c: [i] for i, c in enumerate(cfg.classes, start=1)}}}


def by_subject(folder: Path) -> dict[str, dict]:
    """The datalist entries of ``folder`` by subject (image name without suffix)."""
    return {strip_image_suffix(Path(e["image"])): e for e in datalist_from_folder(folder)}


def _config_tree(text: str, ignore: tuple[str, ...] = ()) -> dict:
    """A dumped config (YAML ``text``) as a tree without the dotted keys ``ignore``, to compare
    what two runs were trained with."""
    import yaml

    tree = yaml.safe_load(text)
    for key in ignore:
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return tree


def _config_differences(text: str, other: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """The top-level keys whose values differ between two dumped configs (YAML), without the
    dotted keys ``ignore``: what makes two runs' models answer for different things."""
    a, b = _config_tree(text, ignore), _config_tree(other, ignore)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _configured(schema: type, tree: dict, overrides: list[str]):  # noqa: ANN202
    for o in overrides:
        apply_override(tree, o)
    return schema.model_validate(tree)


def _train_block(cfg: BenchmarkConfig, out: Path) -> dict:
    return {"spacing_mm": list(cfg.spacing_mm), "patch_size": list(cfg.patch_size), "seed": cfg.seed,
            "device": cfg.device, "output_dir": str(out), "checkpoint_every": 10**9, "segmenter_patches": cfg.segmenter_patches}


def cyclegan_config(cfg: BenchmarkConfig, ct: list[dict], mr: list[dict] | dict, out: Path, shape: bool):  # noqa: ANN201
    """The CycleGANConfig of a CycleGAN row (``shape``: the shape-consistent one) written to ``out``;
    ``mr``: datalist entries of the training MRs, or a whole target side (e.g. :func:`_pseudo_side`)."""
    from medgan.pipelines.cyclegan.config import CycleGANConfig

    target = mr if isinstance(mr, dict) else _side(cfg.target, mr)
    tree = {"classes": cfg.classes, "domain_a": _side(cfg.source, ct), "domain_b": target,
            "network": {"seg_features": list(cfg.seg_features)},
            "loss": {"lambda_shape": 1.0 if shape else 0.0, "lambda_seg_fake": 1.0},
            "optim": {"n_iters": cfg.iters, "seg_finetune_iters": cfg.seg_iters, "seg_lr": cfg.seg_lr},
            "train": {**_train_block(cfg, out), "png_every": cfg.iters}}
    return _configured(CycleGANConfig, tree, cfg.cyclegan)


def _cyclegan(cfg: BenchmarkConfig, ct: list[dict], mr: list[dict] | dict, out: Path, shape: bool) -> Path:
    """Train a CycleGAN row (or reuse what ``out`` holds of it: :func:`reusable_cyclegan`)."""
    from medgan.pipelines.cyclegan.trainer import train

    config = cyclegan_config(cfg, ct, mr, out, shape)
    done, joint = reusable_cyclegan(config)
    if done is not None:
        logger.info("benchmark: %s already holds this row's final checkpoint (same config): reused, not retrained", done)
        return done
    return train(config, resume=joint, progress=False)


def reusable_cyclegan(config) -> tuple[Path | None, Path | None]:  # noqa: ANN001 - CycleGANConfig
    """What a CycleGAN row's output folder already holds of ``config``'s run: ``(final, joint)``,
    the final checkpoint of exactly this config (nothing to train), or else the checkpoint at the
    end of its joint iterations from a run that differs only in ``optim.seg_finetune_iters`` (the
    fine-tuning resumes from it: the joint stage does not depend on it, and a resumed run continues
    exactly, so the row is the same as one trained from scratch). ``None`` where the folder has no
    such checkpoint; a checkpoint of any other config is not used (its row is trained again).
    Where a run was written (``train.output_dir``) is not part of the comparison."""
    o = config.optim
    ckpts = Path(config.train.output_dir) / "checkpoints"

    mine = dump_config(config)

    def same(folder: Path, ignore: tuple[str, ...]) -> bool:
        if not (folder / "config.yaml").is_file() or not (folder / "weights.safetensors").is_file():
            return False
        if _config_tree((folder / "config.yaml").read_text(encoding="utf-8"), ignore) != _config_tree(mine, ignore):
            logger.info("benchmark: %s was trained with another config; not reused", folder)
            return False
        return True

    final = ckpts / f"iter_{o.seg_pretrain_iters + o.n_iters + o.seg_finetune_iters:06d}"
    if same(final, ("train.output_dir",)):
        return final, None
    joint = ckpts / f"iter_{o.seg_pretrain_iters + o.n_iters:06d}"
    if o.seg_finetune_iters > 0 and (joint / "training_state.pt").is_file() and same(joint, ("train.output_dir", "optim.seg_finetune_iters")):
        logger.info("benchmark: resuming %s's fine-tuning from its joint-stage checkpoint %s", ckpts.parent, joint)
        return None, joint
    return None, None


def _adda(cfg: BenchmarkConfig, source: dict, mr: list[dict] | dict, out: Path, supervised: bool = False,
          target_side: bool = False) -> Path:
    """ADDA (or with ``supervised`` its oracle stage only) on ``source`` and the target MRs ``mr``
    (datalist entries, or with ``target_side`` a whole domain section, e.g. with pseudo-labels)."""
    from medgan.pipelines.adda.config import AddaConfig
    from medgan.pipelines.adda.trainer import train_adda

    stages = {"n_source_iters": 1, "n_adapt_iters": 0, "n_oracle_iters": cfg.seg_iters} if supervised else \
        {"n_source_iters": cfg.seg_iters, "n_adapt_iters": cfg.iters, "n_oracle_iters": 0}
    stages["lr_source"] = cfg.seg_lr
    tree = {"classes": cfg.classes, "source": source, "target": mr if target_side else _side(cfg.target, mr),
            "network": {"seg_features": list(cfg.seg_features)}, "optim": stages, "train": _train_block(cfg, out)}
    return train_adda(_configured(AddaConfig, tree, cfg.adda), progress=False)


def _score(segment, test: list[dict], mapper, classes: list[str]) -> list[dict]:  # noqa: ANN001
    """Dice and HD95 (mm) per organ of ``segment(volume)`` on each test subject."""
    rows = []
    for e in test:
        vol = read_volume(e["image"])
        raw = read_label_map(e["label"], vol)
        truth, pred = mapper(raw.array, raw.path), segment(vol)
        rows.append({"subject": strip_image_suffix(Path(e["image"])), "dice": dice_per_class(pred, truth, classes),
                     "hd95_mm": hd95_per_class(pred, truth, classes, vol.spacing_mm)})
    return rows


def _sct_rows(ckpt: Path, test: list[dict], out: Path, real_ct: Path, translate_with: Path | None = None) -> list[dict]:
    """Synthetic CT of each test MR (or ``test`` entries' ``sct`` already made), scored by
    :func:`medgan.pipelines.cyclegan.evaluate.evaluate_set` against the labelled real CTs."""
    from medgan.pipelines.cyclegan.evaluate import Case, evaluate_set
    from medgan.pipelines.cyclegan.translate import translate

    if translate_with is not None:
        rep = translate(translate_with, [e["image"] for e in test], out / "sct", "mr2ct")
        if not rep.ok:
            raise RuntimeError(f"translation of the test MRs failed: {rep.failed}")
    cases = [Case(strip_image_suffix(Path(e["image"])), e.get("sct") or out / "sct" / f"{strip_image_suffix(Path(e['image']))}_mr2ct.nii.gz",
                  source=Path(e["image"]), source_labels=Path(e["label"])) for e in test]
    rep = evaluate_set(cases, out / "evaluation", ckpt, "mr2ct", real_ct=real_ct)
    real = {c: o["real_median"] for c, o in rep.get("organ_hu", {}).items()}
    return [{"subject": r["case"], "dice": r.get("dice", {}),
             "median_hu": r.get("organ_median", {}),
             "abs_median_diff_hu": {c: abs(v - real[c]) for c, v in r.get("organ_median", {}).items() if c in real}}
            for r in rep["results"]]


#: how each segmentation row's checkpoint segments a target scan: a CycleGAN's S_<target> (None)
#: or the named encoder of an ADDA checkpoint
ROW_ENCODER = {"no_adaptation": "source", "adda": "adapted", "cyclegan_plain": None, "cyclegan_shape": None,
               "cycada": "adapted", "self_training": "oracle", "self_training_plain": "oracle", "cyclegan_shape_pseudo": None,
               "supervised": "oracle"}


def row_segmenter(cfg: BenchmarkConfig, row: str, checkpoint: Path, loaded: dict):  # noqa: ANN201
    """``segment(volume) -> class indices`` of the target by ``row``'s model ``checkpoint``
    (:data:`ROW_ENCODER`); ``loaded`` keeps each checkpoint's model, so rows sharing one (no
    adaptation and ADDA) and repeated scorings load it once."""
    from medgan.pipelines.adda.segment import AddaSegmenter
    from medgan.pipelines.cyclegan.translate import Translator

    encoder = ROW_ENCODER[row]
    if checkpoint not in loaded:
        loaded[checkpoint] = Translator(checkpoint, cfg.device) if encoder is None else AddaSegmenter(checkpoint, cfg.device)
    model = loaded[checkpoint]
    if encoder is None:
        return lambda v: model.segment_volume(v, cfg.target.name, largest_component=cfg.largest_component, tta=cfg.tta)
    return lambda v: model.segment_volume(v, encoder, cfg.target.name, largest_component=cfg.largest_component, tta=cfg.tta)


def pseudo_labels(cfg: BenchmarkConfig, unlabelled: list[dict], teacher: str, teacher_checkpoint: Path, out: Path,
                  loaded: dict) -> list[dict]:
    """Pseudo-labels of the training MRs (``unlabelled``; the test subjects never get one) by the
    segmenter of row ``teacher`` (:data:`ROW_ENCODER`) in ``teacher_checkpoint``, written to
    ``out/pseudo/{subject}_pseudo.nii.gz`` on each MR's grid; returns their datalist entries."""
    from medgan.io import write_nifti

    # the teacher's labels as predicted: pseudo-labels cut to each organ's largest component taught
    # worse (CHAOS benchmark, benchmarks/README.md: 0.225 against 0.412 mean Dice, both scored with it)
    segment = row_segmenter(cfg.model_copy(update={"largest_component": False}), teacher, teacher_checkpoint, loaded)
    pseudo = []
    for e in unlabelled:
        vol = read_volume(e["image"])
        path = out / "pseudo" / f"{strip_image_suffix(Path(e['image']))}_pseudo.nii.gz"
        write_nifti(path, segment(vol), vol.affine, dtype=np.uint8)
        pseudo.append({"image": e["image"], "label": str(path)})
    return pseudo


def train_self_training(cfg: BenchmarkConfig, ct: list[dict], unlabelled: list[dict], teacher: str, teacher_checkpoint: Path,
                        out: Path, loaded: dict) -> Path:
    """Self-training: :func:`pseudo_labels` of the training MRs by row ``teacher``, then the
    supervised ADDA segmenter on them; returns its checkpoint (in ``out``, the pseudo-labels in
    ``out/pseudo``). The benchmark's rows are taught by a CycleGAN row (:data:`SELF_TRAINING_TEACHER`);
    a self-training row can teach a further round (``benchmarks/chaos_self_training_row.py``)."""
    pseudo = pseudo_labels(cfg, unlabelled, teacher, teacher_checkpoint, out, loaded)
    return _adda(cfg, _side(cfg.source, ct), _pseudo_side(cfg, pseudo), out, supervised=True, target_side=True)


def train_pseudo_labelled_cyclegan(cfg: BenchmarkConfig, ct: list[dict], unlabelled: list[dict], teacher: str,
                                   teacher_checkpoint: Path, out: Path, loaded: dict) -> Path:
    """A shape-consistent CycleGAN (Zhang et al. 2018, Eq. 4) whose training MRs carry
    :func:`pseudo_labels` by row ``teacher``: the MR -> CT shape term ``L_seg(S_CT(G_MR2CT(x_MR)), y_MR)``
    and S_MR's real-MR term then have labels too, so S_MR, which the CT -> MR shape term trains
    G_CT2MR through, learns real MR anatomy and not only translated CT (the self-training of
    SDC-UDA, CVPR 2023, joined to the translation). Returns its checkpoint (in ``out``)."""
    pseudo = pseudo_labels(cfg, unlabelled, teacher, teacher_checkpoint, out, loaded)
    return _cyclegan(cfg, ct, _pseudo_side(cfg, pseudo), out, shape=True)


def score_cross_protocol(cfg: BenchmarkConfig, results: dict, loaded: dict | None = None) -> dict:
    """Dice/HD95 per organ of each segmentation row of ``results`` (the checkpoint it records
    for the row) on every scan of each ``cfg.cross_protocol`` set: ``{set name: {row: [per-scan
    scores]}}``.

    Raises:
        ValueError: a set without labelled scans, or results that record no checkpoint for a row
            (written before medgan 0.5: run the benchmark again).
    """
    loaded = {} if loaded is None else loaded
    missing = [row for row in results["segmentation"] if row not in results.get("checkpoints", {})]
    if missing:
        raise ValueError(f"{cfg.output_dir}: results.json records no checkpoint for {missing}; run the benchmark again")
    scored: dict = {}
    for extra in cfg.cross_protocol:
        named = {s: e for s, e in by_subject(extra.folder).items() if e["label"]}
        absent = sorted(set(extra.subjects or []) - set(named))
        if absent:
            raise ValueError(f"cross_protocol {extra.name!r}: no labelled scan {absent} in {extra.folder}")
        entries = list(named.values()) if extra.subjects is None else [named[s] for s in extra.subjects]
        if not entries:
            raise ValueError(f"cross_protocol {extra.name!r}: no labelled scan in {extra.folder}")
        mapper = extra.labels.mapper(cfg.classes)
        scored[extra.name] = {row: _score(row_segmenter(cfg, row, Path(ckpt), loaded), entries, mapper, cfg.classes)
                              for row, ckpt in results["checkpoints"].items()}
    return scored


def rescore_cross_protocol(cfg: BenchmarkConfig) -> dict:
    """Score an already trained benchmark (``cfg.output_dir`` with its ``results.json``) on
    ``cfg.cross_protocol`` and rewrite its tables; no training.

    Raises:
        ValueError: no results there, or the stored benchmark was run with another config.
    """
    out = Path(cfg.output_dir)
    if not (out / "results.json").is_file():
        raise ValueError(f"{out}: no results.json: run the benchmark first")
    differ = _config_differences((out / "benchmark.yaml").read_text(encoding="utf-8"), dump_config(cfg), ("cross_protocol",))
    if differ:
        raise ValueError(f"{out}: trained with another config (differs in {differ}); its models do not answer for this one")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    results["cross_protocol"] = score_cross_protocol(cfg, results)
    _write(results, cfg)
    return results


def _read_run(run: Path) -> tuple[BenchmarkConfig, dict]:
    """A finished benchmark's ``(config, results)`` (``benchmark.yaml``, ``results.json`` in ``run``)."""
    return load_config(BenchmarkConfig, run / "benchmark.yaml"), json.loads((run / "results.json").read_text(encoding="utf-8"))


def load_run(run: Path) -> tuple[BenchmarkConfig, dict, list[dict], LabelMapper]:
    """A finished benchmark's ``(config, results, test entries, the target's label mapper)``, to
    score its stored checkpoints again (the ablation scripts in ``benchmarks/``).

    Raises:
        FileNotFoundError: ``run`` has no ``benchmark.yaml`` or ``results.json``.
    """
    cfg, results = _read_run(run)
    target = by_subject(cfg.target.folder)
    return cfg, results, [target[s] for s in results["split"]["test"]], cfg.target.labels.mapper(cfg.classes)


def write_ablation(run: Path, stem: str, table_md: str, scores: dict) -> None:
    """Write an ablation of a finished run (``benchmarks/`` scripts) beside its tables:
    ``{stem}.md`` (the table, also printed) and ``{stem}.json`` (the per-subject scores)."""
    atomic_write_text(run / f"{stem}.md", table_md)
    atomic_write_text(run / f"{stem}.json", json.dumps(scores, indent=2))
    print(table_md)


def _write(results: dict, cfg: BenchmarkConfig) -> None:
    out = Path(cfg.output_dir)
    results["tables"] = tables(results, cfg.classes)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "table.md", markdown(results, cfg))
    atomic_write_text(out / "table.csv", _csv(results["tables"]))


def machine() -> dict:
    """What a run's figures depend on besides the config: the CPU model (bfloat16 autocast runs
    through kernels chosen for it, so the same seed can train differently on another CPU; medgan
    0.14, benchmarks/README.md), the kernels torch dispatches to on it (``cpu_capability``, and
    ``cpu_bf16``: ``amx``, ``avx512_bf16`` or ``None`` for float32 training), the thread count and
    torch's version. The model name alone does not tell them apart: the same "Intel(R) Xeon(R)
    Processor" may or may not have AMX."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    bf16 = "amx" if torch.cpu._is_amx_tile_supported() else "avx512_bf16" if torch.cpu._is_avx512_bf16_supported() else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16": bf16,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _stats(values: list[float]) -> tuple[float, float, int]:
    v = [x for x in values if not math.isnan(x)]
    return (float(np.mean(v)), float(np.std(v)), len(v)) if v else (float("nan"), float("nan"), 0)


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Train every row of ``cfg`` and score it on the test subjects (with ``split.train_all``, on the
    ``cross_protocol`` sets alone) and the ``cross_protocol`` sets; writes ``results.json``,
    ``table.md`` and ``table.csv`` into ``cfg.output_dir`` and returns the results.

    Raises:
        ValueError: a bad split, or a source without labels.
    """
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.yaml", dump_config(cfg))
    target = by_subject(cfg.target.folder)
    train_ids, test_ids, split_note = cfg.split.subjects(list(target))
    ct = cfg.source.datalist()
    if not any(e["label"] for e in ct):
        raise ValueError(f"{cfg.source.where}: no labelled source volume")
    unlabelled = [{"image": target[s]["image"], "label": None} for s in train_ids]
    labelled = [target[s] for s in train_ids]
    test = [target[s] for s in test_ids]
    if any(not e["label"] for e in test):
        raise ValueError(f"test subjects without labels cannot be scored: {[s for s in test_ids if not target[s]['label']]}")
    mapper = cfg.target.labels.mapper(cfg.classes)
    results: dict = {"medgan_version": __version__, "machine": machine(), "split": {"rule": split_note, "train": train_ids, "test": test_ids},
                     "source": [e["image"] for e in ct], "segmentation": {}, "sct": {}, "seconds": {}, "checkpoints": {}}
    ckpts: dict[str, Path] = {}

    def timed(row: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        value = fn()
        results["seconds"][row] = round(time.perf_counter() - t0, 1)
        logger.info("benchmark row %s: %.0f s", row, results["seconds"][row])
        return value

    rows = list(cfg.rows)
    loaded: dict = {}  # checkpoint -> its segmenting model, loaded once (row_segmenter)

    def scored(row: str, checkpoint: Path) -> None:  # the row's model on every test subject (if any: split.train_all)
        results["checkpoints"][row] = str(checkpoint)
        if test:
            results["segmentation"][row] = _score(row_segmenter(cfg, row, Path(checkpoint), loaded), test, mapper, cfg.classes)

    def cyclegan_scored(row: str, checkpoint: Path) -> None:  # S_MR on the test MRs, and their synthetic CT by G_MR2CT
        ckpts[row] = checkpoint
        scored(row, checkpoint)
        if test:
            results["sct"][row] = _sct_rows(checkpoint, test, out / row, cfg.source.where, translate_with=checkpoint)

    if "no_adaptation" in rows or "adda" in rows:
        def adda_rows() -> None:
            ck = _adda(cfg, _side(cfg.source, ct), unlabelled, out / "adda")
            for row in ("no_adaptation", "adda"):
                if row in rows:
                    scored(row, ck)
        timed("no_adaptation + adda", adda_rows)
    teachers = {**SELF_TRAINING_TEACHER, **PSEUDO_LABELLED_CYCLEGAN}
    for row, shape in (("cyclegan_plain", False), ("cyclegan_shape", True)):
        needed_by = [r for r, teacher in teachers.items() if teacher == row] + (["cycada"] if shape else [])
        if row in rows or any(r in rows for r in needed_by) or (shape and cfg.histmatch_baseline):
            def cg(row: str = row, shape: bool = shape) -> None:
                cyclegan_scored(row, _cyclegan(cfg, ct, unlabelled, out / row, shape))
            timed(row, cg)
    if "cycada" in rows:
        def cycada() -> None:
            from medgan.pipelines.cyclegan.translate import translate

            labelled_ct = [e for e in ct if e["label"]]
            rep = translate(ckpts["cyclegan_shape"], [e["image"] for e in labelled_ct], out / "cycada/ct2mr", "ct2mr")
            if not rep.ok:
                raise RuntimeError(f"translation of the CT failed: {rep.failed}")
            files = [{"image": str(out / "cycada/ct2mr" / f"{strip_image_suffix(Path(e['image']))}_ct2mr.nii.gz"),
                      "label": e["label"]} for e in labelled_ct]
            source = {**_side(cfg.source, files, name=f"s{cfg.target.name}"), "intensity": cfg.target.intensity.model_dump(mode="json")}
            scored("cycada", _adda(cfg, source, unlabelled, out / "cycada/adda"))
        timed("cycada", cycada)
    for row, teacher in SELF_TRAINING_TEACHER.items():
        if row in rows:
            def self_training(row: str = row, teacher: str = teacher) -> None:
                scored(row, train_self_training(cfg, ct, unlabelled, teacher, Path(ckpts[teacher]), out / row, loaded))
            timed(row, self_training)
    for row, teacher in PSEUDO_LABELLED_CYCLEGAN.items():
        if row in rows:
            def pseudo_cyclegan(row: str = row, teacher: str = teacher) -> None:
                cyclegan_scored(row, train_pseudo_labelled_cyclegan(cfg, ct, unlabelled, teacher, Path(ckpts[teacher]), out / row, loaded))
            timed(row, pseudo_cyclegan)
    if "supervised" in rows:
        def supervised() -> None:
            scored("supervised", _adda(cfg, _side(cfg.source, ct), labelled, out / "supervised", supervised=True))
        timed("supervised", supervised)
    if cfg.histmatch_baseline:
        def histmatch() -> None:
            from medgan.pipelines.cyclegan.baselines import histogram_match

            ref = next(e["image"] for e in ct if e["label"])
            made = [{**e, "sct": histogram_match(e["image"], ref, out / "histmatch/sct" / f"{strip_image_suffix(Path(e['image']))}_mr2ct.nii.gz")}
                    for e in test]
            results["sct"]["histmatch"] = _sct_rows(ckpts["cyclegan_shape"], made, out / "histmatch", cfg.source.where)
        timed("histmatch", histmatch)
    if cfg.cross_protocol:
        results["cross_protocol"] = timed("cross-protocol scoring", lambda: score_cross_protocol(cfg, results, loaded))
    _write(results, cfg)
    return results


def tables(results: dict, classes: list[str]) -> dict:
    """Per row and organ: mean, std and n over test subjects of each score."""
    out: dict = {"segmentation": {}, "sct": {}}

    def seg_table(per_row: dict) -> dict:
        return {row: {c: {m: _stats([p[m][c] for p in per]) for m in ("dice", "hd95_mm")} for c in classes}
                for row, per in per_row.items()}

    out["segmentation"] = seg_table(results["segmentation"])
    for name, per_row in results.get("cross_protocol", {}).items():
        out[f"cross_protocol: {name}"] = seg_table(per_row)
    for row, per in results["sct"].items():
        out["sct"][row] = {c: {m: _stats([p[m].get(c, float("nan")) for p in per]) for m in ("abs_median_diff_hu", "median_hu", "dice")}
                           for c in classes}
    return out


def _pm(s: tuple[float, float, int], fmt: str, subjects: int | None = None) -> str:
    """``mean ± std``; one value alone when only one subject has it, and ``(n=k)`` when fewer
    than ``subjects`` do (an HD95 is undefined for a subject whose prediction is empty)."""
    if math.isnan(s[0]):
        return "n/a"
    text = f"{s[0]:{fmt}}" if s[2] == 1 else f"{s[0]:{fmt}} ± {s[1]:{fmt}}"
    return text + (f" (n={s[2]})" if subjects is not None and s[2] < subjects else "")


def markdown(results: dict, cfg: BenchmarkConfig) -> str:
    t, cls, test = results["tables"], cfg.classes, results["split"]["test"]
    lines = [f"# Benchmark {cfg.name}", "",
             f"Source (labelled CT): {len(results['source'])} volume(s) of one subject: " + ", ".join(Path(p).name for p in results["source"]),
             f"Target MR split ({results['split']['rule']}): {len(results['split']['train'])} training "
             f"subject{'s' if len(results['split']['train']) != 1 else ''} "
             f"({', '.join(results['split']['train'])}; unlabelled, except for the supervised row), "
             + (f"test {', '.join(test)}." if test else "no test subject: the rows are scored across protocols only."), ""]
    if test:
        lines += ["## CT -> MR segmentation on the test MR: Dice / HD95 (mm), mean ± std over test subjects", "",
                  "| row | " + " | ".join(cls) + " | mean Dice | time (s) |", "|---" * (len(cls) + 3) + "|"]
    seconds = results["seconds"]

    def seg_lines(table: dict, with_time: bool, n: int) -> list[str]:
        made = []
        for row, per in table.items():
            means = [per[c]["dice"][0] for c in cls if not math.isnan(per[c]["dice"][0])]
            sec = next((v for k, v in seconds.items() if row in k.split(" + ") or k == row), "")
            made.append(f"| {ROW_TITLES[row]} | " + " | ".join(f"{_pm(per[c]['dice'], '.3f', n)} / {_pm(per[c]['hd95_mm'], '.1f', n)}" for c in cls)
                        + f" | {np.mean(means):.3f} |" + (f" {sec} |" if with_time else ""))
        return made

    lines += seg_lines(t["segmentation"], True, len(test))
    for name, per_row in results.get("cross_protocol", {}).items():
        subjects = [s["subject"] for s in next(iter(per_row.values()))]
        timed = not test  # the only table of a split.train_all run carries the times
        lines += [""] * (lines[-1] != "") + [f"## Across protocols: {name} ({', '.join(subjects)}; no row trained on it): Dice / HD95 (mm)", "",
                  "| row | " + " | ".join(cls) + " | mean Dice |" + (" time (s) |" if timed else ""),
                  "|---" * (len(cls) + 2 + timed) + "|", *seg_lines(t[f"cross_protocol: {name}"], timed, len(subjects))]
    if t["sct"]:
        lines += ["", "## Synthetic CT of the test MR: |median HU - real CT median HU| and S_CT Dice, mean ± std over test subjects", "",
                  "The real CT medians come from the labelled source CT, which the models trained on (the only labelled "
                  "CT), and histogram matching maps onto that same CT: both flatter the sCT rows. The test MRs are unseen.", "",
                  "| row | " + " | ".join(cls) + " |", "|---" * (len(cls) + 1) + "|"]
        for row, per in t["sct"].items():
            title = "histogram matching (judged by the shape model's S_CT)" if row == "histmatch" else ROW_TITLES[row]
            n = len(results["split"]["test"])
            lines.append(f"| {title} | " + " | ".join(f"{_pm(per[c]['abs_median_diff_hu'], '.1f', n)} HU / {_pm(per[c]['dice'], '.3f', n)}"
                                                      for c in cls) + " |")
    lines += ["", "Time per training block (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()), ""]
    return "\n".join(lines)


#: what may differ between the runs that :func:`combine_runs` combines: repeats differ in ``seed``,
#: folds in ``split.fold``; each run may train other rows too (only rows in every run are combined)
COMBINABLE_KEYS = ("seed", "split.fold", "output_dir", "rows")


def combine_runs(runs: list[Path], out: Path) -> dict:
    """Combine finished benchmark runs (``results.json`` and ``benchmark.yaml`` in each) of one
    config into one table in ``out`` (``table.md``, ``table.csv``, ``combined.json``).

    - **Repeats** (the same test subjects; the runs differ in ``seed``): each row's score per organ
      is the mean over the test subjects in each run, given as mean ± std over the runs. The std is
      the seed spread, the part of a difference between rows that training noise alone makes;
      single runs (the benchmark's table) do not show it.
    - **Folds** (pairwise disjoint test subjects; the runs differ in ``split.fold``): every test
      subject of every fold pooled, mean ± std over subjects (k-fold cross-validation).

    Each row also lists the mean Dice of every run. Only rows that every run trained are combined
    (the others are named in the table). The table gives each run's medgan version (recorded since
    0.13): the configs are compared, the code that trained them is not.

    Raises:
        ValueError: fewer than two runs; a run without results; configs that differ in more than
            :data:`COMBINABLE_KEYS` (the keys are named); two runs of the same seed and fold; test
            subjects that overlap without being the same; no row in every run.
    """
    if len(runs) < 2:
        raise ValueError(f"combine needs two or more benchmark runs, got {len(runs)}")
    loaded = []
    for run in runs:
        run = Path(run)
        if not (run / "results.json").is_file() or not (run / "benchmark.yaml").is_file():
            raise ValueError(f"{run}: no results.json and benchmark.yaml: not a finished benchmark run")
        loaded.append((run, *_read_run(run)))
    base = dump_config(loaded[0][1])
    for run, cfg, _ in loaded[1:]:
        differ = _config_differences(base, dump_config(cfg), COMBINABLE_KEYS)
        if differ:
            raise ValueError(f"{run}: trained with another config than {loaded[0][0]} (differs in {differ}); "
                             f"only {', '.join(COMBINABLE_KEYS[:2])} may differ")
    ids = [(cfg.seed, cfg.split.fold) for _, cfg, _ in loaded]
    if len(set(ids)) < len(ids):
        raise ValueError(f"two runs of the same seed and fold (seed, fold): {ids}; a deterministic rerun is no repeat")
    tests = [tuple(r["split"]["test"]) for _, _, r in loaded]
    if all(t == tests[0] for t in tests):
        kind = "repeats"
    elif sum(len(t) for t in tests) == len({s for t in tests for s in t}):
        kind = "folds"
    else:
        raise ValueError(f"the runs' test subjects overlap without being the same: {[list(t) for t in tests]}; "
                         "combine repeats of one split, or folds of one k-fold split")
    classes = loaded[0][1].classes
    every = [row for row in loaded[0][2]["segmentation"] if all(row in r["segmentation"] for _, _, r in loaded)]
    if not every:
        raise ValueError(f"no row is in every run: {[sorted(r['segmentation']) for _, _, r in loaded]}")
    left_out = sorted({row for _, _, r in loaded for row in r["segmentation"]} - set(every))
    sct_rows = [row for row in loaded[0][2]["sct"] if all(row in r["sct"] for _, _, r in loaded)]

    def combined(per_run: list[list[dict]], metrics: tuple[str, ...]) -> dict:
        if kind == "folds":
            pooled = [p for per in per_run for p in per]
            return {c: {m: _stats([p[m].get(c, float("nan")) for p in pooled]) for m in metrics} for c in classes}
        return {c: {m: _stats([_stats([p[m].get(c, float("nan")) for p in per])[0] for per in per_run]) for m in metrics}
                for c in classes}

    seg = {row: combined([r["segmentation"][row] for _, _, r in loaded], ("dice", "hd95_mm")) for row in every}
    sct = {row: combined([r["sct"][row] for _, _, r in loaded], ("abs_median_diff_hu",)) for row in sct_rows}
    per_run = {row: [float(np.nanmean([_stats([p["dice"][c] for p in r["segmentation"][row]])[0] for c in classes]))
                     for _, _, r in loaded] for row in every}
    result = {"kind": kind, "runs": [str(run) for run, _, _ in loaded], "seeds": [i[0] for i in ids],
              "medgan_versions": [r.get("medgan_version", "unrecorded") for _, _, r in loaded],
              "folds": [i[1] for i in ids], "test": [list(t) for t in tests], "left_out_rows": left_out,
              "tables": {"segmentation": seg, "sct": sct}, "mean_dice_per_run": per_run}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "combined.json", json.dumps(result, indent=2))
    atomic_write_text(out / "table.md", _combined_markdown(result, loaded[0][1]))
    atomic_write_text(out / "table.csv", _csv(result["tables"]))
    return result


def _combined_markdown(result: dict, cfg: BenchmarkConfig) -> str:
    cls, kind = cfg.classes, result["kind"]
    label = [f"seed {s}" for s in result["seeds"]] if kind == "repeats" else [f"fold {f}" for f in result["folds"]]
    how = (f"{len(result['runs'])} repeats of one split (seeds {', '.join(map(str, result['seeds']))}; test "
           f"{', '.join(result['test'][0])}): per organ the mean over the test subjects of each run, mean ± std over "
           "the runs (the std is the seed spread)" if kind == "repeats" else
           f"{len(result['runs'])} folds ({sum(len(t) for t in result['test'])} test subjects, each in one fold): "
           "mean ± std over every fold's test subjects")
    lines = [f"# Benchmark {cfg.name}: {len(result['runs'])} runs combined", "", how + ".", "",
             "Runs: " + ", ".join(f"{l} `{r}` (medgan {v})" for l, r, v in zip(label, result["runs"], result["medgan_versions"])), ""]
    if result["left_out_rows"]:
        lines += [f"Rows not in every run, left out: {', '.join(result['left_out_rows'])}.", ""]
    lines += ["## CT -> MR segmentation on the test MR: Dice / HD95 (mm)", "",
              "| row | " + " | ".join(cls) + " | mean Dice | mean Dice per run |", "|---" * (len(cls) + 3) + "|"]
    for row, per in result["tables"]["segmentation"].items():
        runs = result["mean_dice_per_run"][row]
        lines.append(f"| {ROW_TITLES[row]} | " + " | ".join(f"{_pm(per[c]['dice'], '.3f')} / {_pm(per[c]['hd95_mm'], '.1f')}" for c in cls)
                     + f" | {np.mean(runs):.3f} ± {np.std(runs):.3f} | " + ", ".join(f"{v:.3f}" for v in runs) + " |")
    if result["tables"]["sct"]:
        lines += ["", "## Synthetic CT of the test MR: |median HU - real CT median HU|", "",
                  "| row | " + " | ".join(cls) + " |", "|---" * (len(cls) + 1) + "|"]
        for row, per in result["tables"]["sct"].items():
            lines.append(f"| {ROW_TITLES[row]} | " + " | ".join(f"{_pm(per[c]['abs_median_diff_hu'], '.1f')} HU" for c in cls) + " |")
    return "\n".join(lines) + "\n"


def _csv(t: dict) -> str:
    lines = ["table,row,organ,metric,mean,std,n"]
    for table, rows in t.items():
        for row, organs in rows.items():
            for organ, metrics in organs.items():
                for m, (mean, std, n) in metrics.items():
                    lines.append(f"{table.replace(',', ';')},{row},{organ},{m},{mean:.6g},{std:.6g},{n}")
    return "\n".join(lines) + "\n"


__all__ = ["combine_runs", "run_benchmark", "tables"]
