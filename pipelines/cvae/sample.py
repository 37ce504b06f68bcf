"""Sampling labelled volumes from a trained CVAE, and their quality.

:func:`sample` draws ``n`` images per label map, each from a randomly deformed copy of it (affine
+ elastic, nearest-neighbour on labels) unless ``deform=False``, and writes image/label pairs on
the label map's own grid, labels in the domain's raw ids (so the datalist JSON it writes feeds the
same pipelines as the real data, ``data: {msd: ...}``). It runs as a batch
(:class:`CVAESampleTask` on :func:`medgan.batch.run_batch`), as ``medgan translate`` does for
scans: manifest and resume, atomic outputs, sidecars, bad label maps reported.
"""

from __future__ import annotations

import hashlib

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Rand3DElastic, RandAffine, SpatialPad

from medgan.batch import Manifest, plan_jobs, rank_device, run_batch
from medgan.checkpoint import WEIGHTS, load_networks, open_checkpoint
from medgan.data.intensity import IntensityScaling
from medgan.data.transforms import labels_to_input_grid, to_canonical, to_input_grid
from medgan.inference import inference_device
from medgan.io import Grid, Volume, VolumeError, atomic_write_text, check_whole_numbers, sha256_of
from medgan.keys import Keys
from medgan.metrics import dice_per_class, intensity_stats_per_class
from medgan.pipelines.cvae.config import CVAEConfig, SampleConfig
from medgan.pipelines.cvae.trainer import PIPELINE, build_cvae
from medgan.pipelines.data_config import domain_preprocessor
from medgan.sampling import latent_noise


def deform_labels(labels: torch.Tensor, cfg: SampleConfig, seed: int) -> torch.Tensor:
    """A random affine then elastic deformation of ``labels (1, D, H, W)`` (nearest neighbour)."""
    if not cfg.deform:
        return labels
    rot = math.radians(cfg.rotate_deg)
    aff = RandAffine(prob=1.0, rotate_range=(rot, rot, rot), scale_range=(cfg.scale,) * 3, mode="nearest", padding_mode="zeros")
    aff.set_random_state(seed=seed)
    out = aff(labels)
    ela = Rand3DElastic(sigma_range=cfg.elastic_sigma, magnitude_range=cfg.elastic_magnitude, prob=1.0, mode="nearest", padding_mode="zeros")
    ela.set_random_state(seed=seed + 1)
    out = ela(out)
    return torch.as_tensor(out).round()


class CVAESampler:
    """A trained CVAE checkpoint, loaded once."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        self.folder, self.meta, self.config = open_checkpoint(checkpoint, PIPELINE, CVAEConfig)
        self.device = inference_device(device)
        self.model = build_cvae(self.config)
        load_networks(self.folder, {"CVAE": self.model})
        self.model.to(self.device).eval()
        d = self.config.domain
        self.pre = domain_preprocessor(d, self.config.train.spacing_mm, self.config.classes)
        self.scaling = IntensityScaling.from_dict(self.meta["normalization"][d.name])
        # class index -> a raw id of the domain's label space (the first one), to write raw label maps
        lut = self.pre.label_mapper.lut
        self.raw_id = np.zeros(len(self.config.classes) + 1, dtype=np.int64)
        for k in range(1, len(self.config.classes) + 1):
            self.raw_id[k] = int(np.flatnonzero(lut == k)[0])

    def sample_canonical(self, labels: torch.Tensor, seed: int, cfg: SampleConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``labels (1, D, H, W)`` class indices (canonical frame) -> ``(image (1, D, H, W) in
        [-1, 1], deformed labels (1, D, H, W))`` for one seed."""
        cfg = cfg or self.config.sample
        lab = deform_labels(labels, cfg, seed)
        padded, sl = self._padded(torch.as_tensor(lab))
        gen = torch.Generator().manual_seed(seed)
        img = self.model.sample(padded, generator=gen, temperature=cfg.temperature, truncation=cfg.truncation)
        return img[0].cpu()[sl], torch.as_tensor(lab)

    def _padded(self, labels: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        f = self.model.factor
        size = [int(math.ceil(s / f) * f) for s in labels.shape[1:]]
        padded = torch.as_tensor(SpatialPad(size, method="end", value=0)(labels))[None].long().to(self.device)
        return padded, (slice(None), *[slice(0, s) for s in labels.shape[1:]])

    def sample_noise(self, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``labels (1, D, H, W)`` (not deformed) and latent noise ``eps`` (:meth:`noise_shape`)
        -> image ``(1, D, H, W)`` in [-1, 1]."""
        padded, sl = self._padded(labels)
        return self.model.sample(padded, eps=eps)[0].cpu()[sl]

    def noise_shape(self, labels: torch.Tensor) -> tuple[int, ...]:
        return self.model.latent_shape(self._padded(labels)[0])

    def latent_means(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The encoder's posterior means q(z|x, c) of a real volume ``image (1, D, H, W)`` with
        its ``labels``: ``(N, latent_channels)`` per latent position, and the class filling most of
        each position's ``f^3`` block of voxels ``(N,)``."""
        padded, _ = self._padded(labels)
        f = self.model.factor
        x = SpatialPad(list(padded.shape[2:]), method="end", value=-1.0)(image)
        with torch.no_grad():
            mu, _ = self.model.encoder(torch.cat([torch.as_tensor(x)[None].float().to(self.device), self.model.onehot(padded)], 1)).chunk(2, 1)
        mu = mu[0].flatten(1).T.cpu().numpy()
        k = len(self.config.classes) + 1
        onehot = torch.nn.functional.one_hot(padded[0, 0].cpu(), k).movedim(-1, 0).float()[None]
        votes = torch.nn.functional.avg_pool3d(onehot, f)[0]
        return mu, votes.flatten(1).argmax(0).numpy()


def interpolate(sampler: CVAESampler, labels: torch.Tensor, seeds: tuple[int, int], steps: int = 8, mode: str = "slerp",
                truncation: float | None = None) -> list[torch.Tensor]:
    """Images ``(1, D, H, W)`` along the path between the latent noises of two seeds (``lerp`` or
    ``slerp``, :mod:`medgan.sampling`), for one label map (not deformed): ``steps`` points, both ends included."""
    from medgan.sampling import latent_noise, lerp, slerp

    if mode not in ("lerp", "slerp"):
        raise ValueError(f"interpolation {mode!r}: use lerp or slerp")
    shape = sampler.noise_shape(labels)
    z0, z1 = (latent_noise(shape, seed=s, truncation=truncation) for s in seeds)
    path = slerp if mode == "slerp" else lerp
    return [sampler.sample_noise(labels, path(z0, z1, t)) for t in np.linspace(0.0, 1.0, max(2, steps))]


def truncation_curve(sampler: CVAESampler, volumes: list[dict], thresholds: list[float], n: int = 3, seed: int = 0) -> list[dict]:
    """The diversity / fidelity trade-off over truncation thresholds (``None`` = untruncated):
    for each, ``n`` samples per real label map (not deformed, so only the noise differs) scored
    by :func:`sample_quality`: diversity (mean absolute difference between samples of the same
    label map) and fidelity (mean over classes of |sample mean - real mean| of the intensities,
    the domain's units)."""
    rows = []
    for t in thresholds:
        images, labels, groups = [], [], []
        for g, vol in enumerate(volumes):
            lab = vol[Keys.LABEL.value].float()
            shape = sampler.noise_shape(lab)
            for k in range(n):
                eps = latent_noise(shape, seed=seed + 1000 * g + k, truncation=t)
                images.append(sampler.scaling.inverse(sampler.sample_noise(lab, eps)[0].numpy()))
                labels.append(lab[0].long().numpy())
                groups.append(g)
        real_i = [sampler.scaling.inverse(v[Keys.IMAGE.value][0].numpy()) for v in volumes]
        real_l = [v[Keys.LABEL.value][0].long().numpy() for v in volumes]
        q = sample_quality(images, labels, real_i, real_l, list(sampler.config.classes), groups=groups)
        diffs = [v["abs_diff_mean"] for v in q["intensity"].values()]
        rows.append({"truncation": t, "diversity_mean_abs_diff": q["diversity_mean_abs_diff"],
                     "intensity_abs_diff_mean": float(np.mean(diffs)) if diffs else float("nan"), "per_class": q["intensity"]})
    return rows


def write_datalist(entries: list[dict[str, str]], output_dir: str | Path) -> Path:
    """An MSD-style ``dataset.json`` (``training`` section, paths relative to it)."""
    path = Path(output_dir) / "dataset.json"
    atomic_write_text(path, json.dumps({"name": "medgan CVAE samples", "training": entries}, indent=2))
    return path


class CVAESampleTask:
    """:class:`medgan.batch.VolumeTask` drawing ``n`` image/label pairs per label map: prepare =
    label map to class indices on the canonical grid, run = ``n`` deformed samples, finish = back
    onto the label map's grid (image in the domain's units, labels in its raw ids)."""

    name = "cvae"
    check_values = False  # label maps: a constant map is the label mapper's to judge

    def __init__(self, sampler: CVAESampler, n: int, seeds: dict[str, int], cfg: SampleConfig) -> None:
        self.sampler, self.n, self.seeds, self.cfg = sampler, int(n), seeds, cfg
        self.device = sampler.device

    def prepare(self, volume: Volume):  # noqa: ANN201
        check_whole_numbers(volume)  # read as a batch scan: the check read_label_map makes
        classes = self.sampler.pre.label_mapper(volume.array, volume.path).astype(np.float32)
        can = to_canonical(Volume(classes, volume.affine, volume.path), self.sampler.config.train.spacing_mm, "nearest")
        return can, self.seeds[volume.path]

    def run(self, prepared) -> list[tuple[torch.Tensor, torch.Tensor]]:  # noqa: ANN001
        can, seed = prepared
        return [self.sampler.sample_canonical(can.as_tensor(), seed + 1000 * k, self.cfg) for k in range(self.n)]

    def finish(self, grid: Grid, prepared, result) -> dict[str, tuple[np.ndarray, type]]:  # noqa: ANN001
        can, seed = prepared
        s, arrays = self.sampler, {}
        for k, (img, lab) in enumerate(result):
            img_g = s.scaling.inverse(to_input_grid(img, can.affine, grid.affine, grid.shape, "bilinear")[0])
            lab_g = labels_to_input_grid(lab[0], can.affine, grid.affine, grid.shape, np.int64)
            arrays[f"{seed + k:04d}"] = (img_g, np.float32)
            arrays[f"{seed + k:04d}_labels"] = (s.raw_id[lab_g], np.int16)
        return arrays

    def provenance(self) -> dict:
        s = self.sampler
        return {"checkpoint": str(s.folder.resolve()), "checkpoint_sha256": sha256_of(s.folder / WEIGHTS),
                "config": s.config.model_dump(mode="json"), "samples_per_label_map": self.n,
                "sample": self.cfg.model_dump(mode="json"), "domain": s.config.domain.name,
                # the seeds decide the samples, so a rerun with other seeds redoes them
                "seeds_sha256": hashlib.sha256(json.dumps(self.seeds, sort_keys=True).encode()).hexdigest()}


def sample(checkpoint: str | Path, labels: list[str | Path], n: int, output_dir: str | Path, seed: int = 0,
           deform: bool | None = None, device: str = "auto", on_result=None) -> Path:  # noqa: ANN001
    """Sample ``n`` pairs per label map into ``output_dir`` through :func:`medgan.batch.run_batch`
    (background reading and writing, manifest and resume, atomic outputs, sidecars, torchrun
    sharding); the pairs of label map ``i`` use seeds ``seed + 100000 i + 1000 k``. Returns the
    ``dataset.json`` listing every pair in the folder's manifest.

    Raises:
        VolumeError: some label maps failed (the others' pairs and the datalist are written).
    """
    sampler = CVAESampler(checkpoint, rank_device(device))
    cfg = sampler.config.sample if deform is None else sampler.config.sample.model_copy(update={"deform": deform})
    jobs = [replace(j, stem=j.stem.removesuffix("_labels")) for j in plan_jobs(list(labels))]
    seeds = {str(j.source): seed + 100_000 * i for i, j in enumerate(jobs)}
    report = run_batch(CVAESampleTask(sampler, n, seeds, cfg), jobs, output_dir, on_result=on_result)
    entries = []
    for rec in Manifest(Path(output_dir), 0, 1).records().values():
        if rec.get("status") == "done":
            images = sorted(o for o in rec["outputs"] if o.endswith(".nii.gz") and not o.endswith("_labels.nii.gz"))
            entries += [{"image": im, "label": im.replace(".nii.gz", "_labels.nii.gz")} for im in images]
    path = write_datalist(entries, output_dir)
    if report.failed:
        raise VolumeError("; ".join(report.failed.values()))
    return path


def sample_quality(images: list[np.ndarray], labels: list[np.ndarray], real_images: list[np.ndarray],
                   real_labels: list[np.ndarray], classes: list[str], predicted: list[np.ndarray] | None = None,
                   groups: list[int] | None = None) -> dict:
    """Sample quality, all arrays as class indices / intensities on matching grids:

    - ``intensity``: per class, mean and std of sample intensities vs real ones, and the absolute
      difference of the means (the domain's units);
    - ``label_fidelity``: Dice per class of ``predicted`` (a real-trained segmenter on the samples)
      against the conditioning labels;
    - ``diversity``: mean absolute difference between samples drawn for the same label map
      (``groups`` gives each sample's label map), inside the labelled region, in the domain's units.
    """
    report: dict = {}
    syn = intensity_stats_per_class(np.concatenate([i.ravel() for i in images]), np.concatenate([lb.ravel() for lb in labels]), classes)
    real = intensity_stats_per_class(np.concatenate([i.ravel() for i in real_images]), np.concatenate([lb.ravel() for lb in real_labels]), classes)
    report["intensity"] = {c: {"sample_mean": syn[c]["mean"], "real_mean": real[c]["mean"], "sample_std": syn[c]["std"],
                               "real_std": real[c]["std"], "abs_diff_mean": abs(syn[c]["mean"] - real[c]["mean"])}
                           for c in classes if c in syn and c in real}
    if predicted is not None:
        per = [dice_per_class(p, lb, classes) for p, lb in zip(predicted, labels)]
        report["label_fidelity"] = {c: float(np.nanmean([d[c] for d in per])) for c in classes if any(not math.isnan(d[c]) for d in per)}
    if groups is not None:
        dists = []
        for g in set(groups):
            idx = [i for i, gg in enumerate(groups) if gg == g]
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    m = (labels[idx[a]] > 0) & (labels[idx[b]] > 0)
                    if m.any():
                        dists.append(float(np.abs(images[idx[a]][m] - images[idx[b]][m]).mean()))
        report["diversity_mean_abs_diff"] = float(np.mean(dists)) if dists else float("nan")
    return report
