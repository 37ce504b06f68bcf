"""``medgan inspect``: feature and latent views of trained models, and Fréchet distances of volume
sets (issue 17). The computations are :mod:`medgan.features` and :mod:`medgan.sampling`; this
module picks the networks and volumes of each pipeline's checkpoint.

- ADDA: encoder features of source and target volumes, pooled per patch, per U-Net level, before
  adaptation (E_src on both domains) and after (E_src on the source, E_tgt on the target).
- CycleGAN: S_CT / S_MR encoder features of real volumes and of translated ones (G_MR2CT(MR) seen
  by S_CT beside real CTs; G_CT2MR(CT) by S_MR beside real MRs).
- CVAE: the encoder's posterior means per latent position, coloured by the class there.

Volumes default to the training data named in the checkpoint's config (the views are about what
the model learned); ``max_volumes`` caps each domain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from medgan.features import PROJECTIONS, domain_accuracy, feature_distances, frechet_distance, patch_features, project, save_projection
from medgan.keys import Keys
from medgan.networks.segmenters import UNetEncoder

logger = logging.getLogger(__name__)

#: the note every feature-based number carries
EXTRACTOR_NOTE = "features of medgan's own trained segmenter encoder (not Inception/MedicalNet): compare only with sets scored by the same network"


def _volumes(pre, entries: list[dict], patch_size, max_volumes: int) -> list[dict]:  # noqa: ANN001 - a DomainPreprocessor
    out = []
    for e in entries[:max_volumes]:
        item, _ = pre.training_volume(e, patch_size)
        item["path"] = e["image"]
        out.append(item)
    return out


def _domain_volumes(tr, max_volumes: int) -> dict[str, list[dict]]:  # noqa: ANN001 - a CycleGAN Translator
    """Both domains' training volumes of a CycleGAN (at most ``max_volumes`` each) in its frame."""
    cfg = tr.config
    return {d.name: _volumes(tr.preprocessor(d.name), d.data.datalist(), cfg.train.patch_size, max_volumes)
            for d in (cfg.domain_a, cfg.domain_b)}


def _translated(tr, vols: list[dict], src: str, tgt: str) -> list[dict]:  # noqa: ANN001 - a CycleGAN Translator
    """``vols`` translated ``src -> tgt`` by the generator; each keeps its source's labels (shape consistency)."""
    out = []
    for v in vols:
        with torch.inference_mode():
            y = tr.translate_tensor(v[Keys.IMAGE.value][None].to(tr.device), f"{src}2{tgt}")[0].cpu()
        out.append({**v, Keys.IMAGE.value: y})
    return out


def _views(prefix: Path, feats: dict[str, np.ndarray], organs: dict[str, list[str]], title: str, methods, seed: int) -> dict:  # noqa: ANN001
    """Projections and the domain accuracy of two named feature sets."""
    names = list(feats)
    x = np.concatenate([feats[n] for n in names])
    domains = [n for n in names for _ in range(len(feats[n]))]
    org = [o for n in names for o in organs[n]]
    acc = domain_accuracy(x, domains, seed)
    coords = {m: project(x, m, seed) for m in methods}
    png, csv = save_projection(prefix, coords, domains, org, title, f"domain-classifier balanced accuracy {acc:.3f} (0.5 = aligned)")
    return {"domain_accuracy": round(acc, 4), "n": {n: len(feats[n]) for n in names}, "png": str(png), "csv": str(csv),
            **{k: round(v, 4) for k, v in feature_distances(feats[names[0]], feats[names[1]]).items() if k.startswith(("frechet", "mmd"))}}


def feature_patch(training_patch) -> tuple[int, int, int]:  # noqa: ANN001
    """The patch features are pooled over: half the training patch per axis, at least 16 voxels
    (four U-Net downsamplings), so that a volume gives enough patches (a grid with half-patch
    stride) for projections and a domain classifier; the training patch itself when the half
    would leave a single voxel at the bottleneck (its instance norms need more than one)."""
    half = tuple(max(16, int(p) // 2) for p in training_patch)
    return half if max(half) >= 32 else tuple(int(p) for p in training_patch)  # type: ignore[return-value]


def _features(encoder, vols: list[dict], patch, levels, classes, device) -> tuple[dict[int, np.ndarray], list[str]]:  # noqa: ANN001
    patch = feature_patch(patch)
    per = [patch_features(encoder, v[Keys.IMAGE.value], patch, levels, v[Keys.LABEL.value] if v[Keys.HAS_LABEL.value] else None,
                          classes, device) for v in vols]
    return {lv: np.concatenate([p[0][lv] for p in per]) for lv in levels}, [o for p in per for o in p[1]]


def inspect_adda(checkpoint: str | Path, output_dir: str | Path, levels: tuple[int, ...] = (2, 3, 4), max_volumes: int = 4,
                 methods: tuple[str, ...] = PROJECTIONS, device: str = "auto", seed: int = 0) -> dict:
    """ADDA's encoder features before and after adaptation, per level: ``adda_level{l}_{before|after}.png/.csv``
    and ``adda_features.json`` (domain accuracy, Fréchet distance and MMD source vs target)."""
    from medgan.pipelines.adda.segment import AddaSegmenter

    m = AddaSegmenter(checkpoint, device)
    cfg, out = m.config, Path(output_dir)
    patch = cfg.train.patch_size
    src = _volumes(m.pre[cfg.source.name], cfg.source.data.datalist(), patch, max_volumes)
    tgt = _volumes(m.pre[cfg.target.name], cfg.target.data.datalist(), patch, max_volumes)
    e_src, e_tgt = m.nets["E_src"], m.nets["E_tgt"]
    fs, os_ = _features(e_src, src, patch, levels, cfg.classes, m.device)
    fb, ob = _features(e_src, tgt, patch, levels, cfg.classes, m.device)
    fa, oa = _features(e_tgt, tgt, patch, levels, cfg.classes, m.device)
    s, t = cfg.source.name, cfg.target.name
    report: dict = {"checkpoint": str(m.folder), "extractor": "E_src (before) / E_tgt (after)", "levels": {}}
    for lv in levels:
        report["levels"][lv] = {
            "before": _views(out / f"adda_level{lv}_before", {s: fs[lv], t: fb[lv]}, {s: os_, t: ob},
                             f"ADDA level {lv}, before adaptation (E_src on both)", methods, seed),
            "after": _views(out / f"adda_level{lv}_after", {s: fs[lv], t: fa[lv]}, {s: os_, t: oa},
                            f"ADDA level {lv}, after adaptation (E_src on {s}, E_tgt on {t})", methods, seed)}
    (out / "adda_features.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def inspect_cyclegan(checkpoint: str | Path, output_dir: str | Path, level: int = 4, max_volumes: int = 4,
                     methods: tuple[str, ...] = PROJECTIONS, device: str = "auto", seed: int = 0) -> dict:
    """S_CT / S_MR encoder features (``level``; 4 = the bottleneck) of real and translated volumes:
    ``cyclegan_S_{domain}.png/.csv`` and ``cyclegan_features.json`` (domain accuracy real vs
    translated, Fréchet distance and MMD: the sCT against real CTs and the synthetic MR against real MRs)."""
    from medgan.pipelines.cyclegan.translate import Translator

    tr = Translator(checkpoint, device)
    cfg, out = tr.config, Path(output_dir)
    if not tr.classes:
        raise ValueError(f"{tr.folder}: this model has no segmenters (no classes configured): nothing to take features from")
    patch = cfg.train.patch_size
    a, b = cfg.domain_a.name, cfg.domain_b.name
    vols = _domain_volumes(tr, max_volumes)
    report: dict = {"checkpoint": str(tr.folder), "level": level, "note": EXTRACTOR_NOTE, "domains": {}}
    for tgt, src in ((a, b), (b, a)):
        enc = UNetEncoder(tr.nets[f"S_{tgt}"])
        fake = _translated(tr, vols[src], src, tgt)
        fr, orr = _features(enc, vols[tgt], patch, (level,), tr.classes, tr.device)
        ff, of = _features(enc, fake, patch, (level,), tr.classes, tr.device)
        report["domains"][tgt] = _views(out / f"cyclegan_S_{tgt}", {f"real {tgt}": fr[level], f"{src}->{tgt}": ff[level]},
                                        {f"real {tgt}": orr, f"{src}->{tgt}": of},
                                        f"S_{tgt} level {level}: real vs translated", methods, seed)
    (out / "cyclegan_features.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def inspect_cvae(checkpoint: str | Path, output_dir: str | Path, max_volumes: int = 4, max_points: int = 3000,
                 methods: tuple[str, ...] = PROJECTIONS, device: str = "auto", seed: int = 0) -> dict:
    """The CVAE encoder's posterior means per latent position of real volumes, coloured by the
    class at that position (majority of its block of voxels): ``cvae_latents.png/.csv``; at most
    ``max_points`` positions (a seeded random subset, background thinned first)."""
    from medgan.pipelines.cvae.sample import CVAESampler
    from medgan.pipelines.cvae.trainer import labelled_volumes

    s = CVAESampler(checkpoint, device)
    out = Path(output_dir)
    vols, _ = labelled_volumes(s.config)
    mus, cls, names = [], [], []
    for i, v in enumerate(vols[:max_volumes]):
        mu, c = s.latent_means(v[Keys.IMAGE.value], v[Keys.LABEL.value].float())
        mus.append(mu)
        cls.append(c)
        names += [f"volume {i}"] * len(c)
    mu, c = np.concatenate(mus), np.concatenate(cls)
    rng = np.random.default_rng(seed)
    fg, bg = np.flatnonzero(c > 0), np.flatnonzero(c == 0)
    keep_bg = rng.permutation(bg)[: max(0, max_points - min(len(fg), max_points))]
    keep = np.sort(np.concatenate([rng.permutation(fg)[:max_points], keep_bg]))
    labels = ["background", *s.config.classes]
    organs = [labels[int(k)] for k in c[keep]]
    coords = {m: project(mu[keep], m, seed) for m in methods}
    png, csv = save_projection(out / "cvae_latents", coords, [names[i] for i in keep], organs,
                               f"CVAE posterior means per latent position ({s.config.network.latent_channels} channels)")
    report = {"checkpoint": str(s.folder), "points": int(len(keep)), "png": str(png), "csv": str(csv)}
    (out / "cvae_latents.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def inspect(checkpoint: str | Path, output_dir: str | Path, **kw) -> dict:  # noqa: ANN003
    """The views of whatever pipeline ``checkpoint`` is from (by its ``meta.json``)."""
    from medgan.checkpoint import checkpoint_pipeline

    folder, pipeline = checkpoint_pipeline(checkpoint)
    fn = {"adda": inspect_adda, "cyclegan": inspect_cyclegan, "cvae": inspect_cvae}.get(pipeline)
    if fn is None:
        raise ValueError(f"{folder}: medgan inspect knows adda, cyclegan and cvae checkpoints, not {pipeline!r}")
    import inspect as _inspect

    Path(output_dir).mkdir(parents=True, exist_ok=True)
    params = _inspect.signature(fn).parameters
    return fn(folder, output_dir, **{k: v for k, v in kw.items() if k in params and v is not None})


# ---------------------------------------------------------------------- Fréchet distance of volume sets
def _organ_distances(real: list[dict], synth: list[dict], classes, scaling, max_voxels: int = 200_000, seed: int = 0) -> dict:  # noqa: ANN001
    """Per class, the Wasserstein-1 distance (the domain's units: HU for CT) and the absolute
    difference of the medians between the pooled intensities inside the labels of each set."""
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(seed)

    def pooled(items: list[dict], c: int) -> np.ndarray:
        vals = [scaling.inverse(v[Keys.IMAGE.value][0].numpy())[v[Keys.LABEL.value][0].numpy() == c] for v in items
                if v[Keys.HAS_LABEL.value]]
        x = np.concatenate(vals) if vals else np.zeros(0)
        return rng.choice(x, max_voxels, replace=False) if len(x) > max_voxels else x

    out = {}
    for c, name in enumerate(classes, start=1):
        a, b = pooled(real, c), pooled(synth, c)
        if len(a) and len(b):
            out[name] = {"wasserstein1": round(float(wasserstein_distance(a, b)), 2),
                         "abs_median_diff": round(float(abs(np.median(a) - np.median(b))), 2)}
    return out


def score_sets(encoder, real: list[dict], synth: list[dict], patch, level: int, classes, scaling, device) -> dict:  # noqa: ANN001
    """Fréchet distance and MMD of the pooled level-``level`` features of two sets of volumes
    (items with ``image (1, D, H, W)`` in [-1, 1], ``label``, ``has_label``), plus per-organ
    intensity distances."""
    fr, _ = _features(encoder, real, patch, (level,), classes, device)
    fs, _ = _features(encoder, synth, patch, (level,), classes, device)
    return {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in feature_distances(fr[level], fs[level]).items()},
            "organs": _organ_distances(real, synth, classes, scaling)}


def sanity_check(encoder, real: list[dict], patch, level: int, classes, device, noise: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4),  # noqa: ANN001
                 seed: int = 0) -> dict:
    """The Fréchet distance between two halves of one real set (patches alternately assigned: it
    should be near 0, relative to the distances below) and between one half and the other half
    with Gaussian noise of standard deviation ``noise`` (the networks' [-1, 1] units) added to
    its volumes (it should grow with the noise)."""
    feats, _ = _features(encoder, real, patch, (level,), classes, device)
    x = feats[level]
    half_a, half_b = x[0::2], x[1::2]
    rows = {"halves": round(frechet_distance(half_a, half_b), 4), "n_per_half": len(half_b), "noise": {}}
    gen = torch.Generator().manual_seed(seed)
    for s in noise:
        noisy = [{**v, Keys.IMAGE.value: (v[Keys.IMAGE.value] + s * torch.randn(v[Keys.IMAGE.value].shape, generator=gen)).clamp(-1, 1)}
                 for v in real]
        fn, _ = _features(encoder, noisy, patch, (level,), classes, device)
        rows["noise"][str(s)] = round(frechet_distance(half_a, fn[level][1::2]), 4)
    return rows


def fid_cyclegan(checkpoint: str | Path, output_dir: str | Path, level: int = 4, max_volumes: int = 8, device: str = "auto",
                 sanity: bool = True) -> dict:
    """Score the CycleGAN's translations: the synthetic volumes of each domain (translated from
    the other domain's volumes, labels carried over) against that domain's real volumes, with
    S_<domain>'s encoder features; ``fid_cyclegan.json``. The volumes are the config's training
    data (capped at ``max_volumes`` per domain): say so when quoting the numbers."""
    from medgan.pipelines.cyclegan.translate import Translator

    tr = Translator(checkpoint, device)
    cfg = tr.config
    if not tr.classes:
        raise ValueError(f"{tr.folder}: this model has no segmenters (no classes configured): no feature extractor")
    patch = cfg.train.patch_size
    vols = _domain_volumes(tr, max_volumes)
    report: dict = {"checkpoint": str(tr.folder), "extractor": f"S_<domain> encoder level {level}", "note": EXTRACTOR_NOTE,
                    "data": "the model's training volumes", "sets": {}}
    for tgt, src in ((cfg.domain_a.name, cfg.domain_b.name), (cfg.domain_b.name, cfg.domain_a.name)):
        enc = UNetEncoder(tr.nets[f"S_{tgt}"])
        fake = _translated(tr, vols[src], src, tgt)
        entry = {f"{src}->{tgt} vs real {tgt}": score_sets(enc, vols[tgt], fake, patch, level, tr.classes, tr.scaling[tgt], tr.device)}
        if sanity:
            entry["sanity (real halves, + noise)"] = sanity_check(enc, vols[tgt], patch, level, tr.classes, tr.device)
        report["sets"][tgt] = entry
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid_cyclegan.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def fid_cvae(checkpoint: str | Path, features_checkpoint: str | Path, output_dir: str | Path, n_per_label: int = 2,
             level: int = 4, max_volumes: int = 8, truncation: float | None = None, device: str = "auto") -> dict:
    """Score CVAE samples (``n_per_label`` per real label map, deformed as configured) against the
    real volumes of its domain, with the encoder of S_<domain> from the CycleGAN checkpoint
    ``features_checkpoint`` (same spacing); ``fid_cvae.json``."""
    from dataclasses import replace

    from medgan.pipelines.cvae.sample import CVAESampler
    from medgan.pipelines.cvae.trainer import labelled_volumes
    from medgan.pipelines.cyclegan.translate import Translator

    s = CVAESampler(checkpoint, device)
    tr = Translator(features_checkpoint, device)
    dom = s.config.domain.name
    name = f"S_{dom}"
    if name not in tr.nets:
        raise ValueError(f"{tr.folder}: no {name} to take features from (its domains: {tr.names.a}, {tr.names.b})")
    if tuple(tr.config.train.spacing_mm) != tuple(s.config.train.spacing_mm):
        raise ValueError(f"{tr.folder}: {name} was trained at {tr.config.train.spacing_mm} mm, the CVAE at "
                         f"{s.config.train.spacing_mm} mm; features need the same spacing")
    real, _ = labelled_volumes(s.config)
    real = real[:max_volumes]
    cfg = replace(s.config.sample, truncation=truncation) if truncation is not None else s.config.sample
    synth = []
    for g, v in enumerate(real):
        for k in range(n_per_label):
            img, lab = s.sample_canonical(v[Keys.LABEL.value].float(), seed=1000 * g + k, cfg=cfg)
            synth.append({Keys.IMAGE.value: img.float(), Keys.LABEL.value: lab.long(), Keys.HAS_LABEL.value: True})
    classes = list(s.config.classes)
    enc = UNetEncoder(tr.nets[name])
    patch = s.config.train.patch_size
    report = {"checkpoint": str(s.folder), "extractor": f"{name} encoder level {level} of {tr.folder}", "note": EXTRACTOR_NOTE,
              "truncation": truncation, "samples": len(synth), "real": len(real),
              "cvae vs real": score_sets(enc, real, synth, patch, level, classes, s.scaling, s.device),
              "sanity (real halves, + noise)": sanity_check(enc, real, patch, level, classes, s.device)}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid_cvae.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report
