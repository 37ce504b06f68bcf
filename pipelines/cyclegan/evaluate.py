"""Evaluation of a translated volume.

(a) **Shape preservation** (Zhang et al. 2018): Dice per class between the target-domain
    segmenter's labels of the translated volume and the source volume's own labels.
(b) **Realism without a paired reference**: per-organ intensity statistics (HU for a synthetic
    CT) inside the source's labels, against the same statistics of a real labelled volume of the
    target domain; reported as absolute differences of the means and medians.
(c) **With a paired reference** on the same voxels: SynthRAD2025's MAE (HU), PSNR and masked
    MS-SSIM inside the reference's body mask (:func:`medgan.metrics.paired_metrics`).

:func:`evaluate_set` does all of this over a test set (CSV, ``dataset.json`` or a folder of
``medgan translate`` outputs), adds HD95 and SynthRAD2025's segmentation metric, per-organ HU
distributions against real CTs, figures, and SynthRAD2025's ``metrics.json`` layout.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgan.data.transforms import onto_grid
from medgan.io import Volume, atomic_write_text, image_suffix, is_image_path, read_label_map, read_volume, strip_image_suffix
from medgan.metrics import dice_per_class, intensity_stats_per_class, paired_metrics
from medgan.pipelines.cyclegan.translate import Translator, open_translator

logger = logging.getLogger(__name__)


def evaluate(
    checkpoint: str | Path,
    translated: str | Path,
    direction: str,
    source_labels: str | Path | None = None,
    reference: str | Path | None = None,
    reference_labels: str | Path | None = None,
    paired_reference: str | Path | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    translator: Translator | None = None,
) -> dict:
    """Evaluate ``translated`` (the output of ``direction``, on its source's grid).

    Args:
        checkpoint: the model that translated it (its target segmenter and class maps are used).
        source_labels: labels of the source volume (its dataset's ids) -> (a) and (b).
        reference, reference_labels: a real target-domain volume with labels -> (b).
        paired_reference: a registered real target volume on the same grid -> (c).
        output_dir: where ``evaluation.json`` and ``evaluation.csv`` are written.

    Returns:
        ``{"dice": {class: value}, "intensity": {class: {...}}, "paired": {...}}`` (present parts).
    """
    tr = translator or open_translator(checkpoint, device)
    src, tgt = tr.parse_direction(direction)
    vol = read_volume(translated)
    report: dict = {"translated": str(translated), "direction": f"{src}->{tgt}", "checkpoint": str(tr.folder)}
    classes = tr.classes
    src_lab = None
    if source_labels is not None:
        src_lab = _classes_on(tr, src, source_labels, vol, report, "source_labels")
        pred = tr.segment_volume(vol, tgt)
        report["dice"] = dice_per_class(pred, src_lab, classes)
        report["dice_mean"] = _mean(report["dice"])
    if reference is not None and reference_labels is not None and src_lab is not None:
        ref = read_volume(reference)
        ref_lab = _classes_on(tr, tgt, reference_labels, ref, report, "reference_labels")
        ours = intensity_stats_per_class(vol.array, src_lab, classes)
        theirs = intensity_stats_per_class(ref.array, ref_lab, classes)
        report["intensity"] = {
            c: {
                "translated_mean": ours[c]["mean"], "reference_mean": theirs[c]["mean"],
                "abs_diff_mean": abs(ours[c]["mean"] - theirs[c]["mean"]),
                "translated_median": ours[c]["median"], "reference_median": theirs[c]["median"],
                "abs_diff_median": abs(ours[c]["median"] - theirs[c]["median"]),
            }
            for c in classes if c in ours and c in theirs
        }
    if paired_reference is not None:
        ref = read_volume(paired_reference)
        # the same voxels in any axis order are matched by world position; anything else is refused
        report["paired"] = paired_metrics(vol.array, onto_grid(ref, vol.affine, vol.array.shape, "exact"))
    if output_dir is not None:
        write_report(report, output_dir)
    return report


def _classes_on(tr: Translator, domain: str, labels: str | Path, image: Volume, report: dict | None = None,
                name: str = "labels") -> np.ndarray:
    """The label map ``labels`` (its dataset's ids) as class indices of the model's ``classes`` on
    ``image``'s voxels, matched by world position (nearest neighbour; background outside the
    label map); a resampling is logged and, with a ``report``, recorded in it.

    Raises:
        ValueError: the model has no label table for ``domain``, or the map has unknown ids.
    """
    mapper = tr.preprocessor(domain).label_mapper
    if mapper is None:
        raise ValueError(f"{tr.folder}: model has no label mapping for domain {domain}")
    raw = read_label_map(labels)
    out = onto_grid(raw, image.affine, image.array.shape, "nearest")
    if out is not raw.array:
        logger.warning("%s: on another voxel grid than %s; matched by world position (nearest neighbour)", raw.path, image.path)
        if report is not None:
            report.setdefault("resampled", {})[name] = f"{raw.path} -> grid of {image.path} (nearest neighbour, world coordinates)"
    return mapper(out, raw.path)


def report_rows(report: dict) -> list[dict]:
    """Flat rows ``{metric, class, value}`` of a report (for CSV and tables)."""
    rows = []
    for c, v in report.get("dice", {}).items():
        rows.append({"metric": "dice", "class": c, "value": v})
    if "dice_mean" in report:
        rows.append({"metric": "dice", "class": "mean", "value": report["dice_mean"]})
    for c, d in report.get("intensity", {}).items():
        for k, v in d.items():
            rows.append({"metric": k, "class": c, "value": v})
    for k, v in report.get("paired", {}).items():
        rows.append({"metric": k, "class": "body", "value": v})
    return rows


def write_report(report: dict, output_dir: str | Path) -> tuple[Path, Path]:
    """``evaluation.json`` and ``evaluation.csv`` in ``output_dir``."""
    out = Path(output_dir)
    j = atomic_write_text(out / "evaluation.json", json.dumps(report, indent=2))
    lines = ["metric,class,value"] + [f"{r['metric']},{r['class']},{r['value']:.6g}" for r in report_rows(report)]
    c = atomic_write_text(out / "evaluation.csv", "\n".join(lines) + "\n")
    return j, c




# ---------------------------------------------------------------------------- whole test sets

MASK_RULE = "body mask of the reference CT: HU > -500, largest connected component, holes filled (medgan.metrics.body_mask)"
SEG_NOTE = ("S_CT of the model stands in for TotalSegmentator in SynthRAD2025's segmentation metric: "
            "the numbers depend on that segmenter")


@dataclass
class Case:
    """One test case: a translated volume and what it is compared with (all optional but ``sct``).

    ``reference`` is a registered real volume of the target domain (same voxels as ``sct``),
    ``mask`` restricts the image metrics, ``source`` is the volume that was translated and
    ``source_labels`` its label map (the dataset's ids)."""

    case: str
    sct: Path
    reference: Path | None = None
    mask: Path | None = None
    source: Path | None = None
    source_labels: Path | None = None


_ALIASES = {"sct": ("sct", "translated", "image", "prediction"), "reference": ("reference", "ct", "target"),
            "mask": ("mask",), "source": ("source", "mr", "input"), "source_labels": ("source_labels", "label", "labels")}


def _case_from(entry: dict, base: Path, index: int) -> Case:
    def get(field: str) -> Path | None:
        for k in _ALIASES[field]:
            v = entry.get(k)
            if v not in (None, ""):
                p = Path(str(v)).expanduser()
                return p if p.is_absolute() else (base / p).resolve()
        return None

    sct = get("sct")
    if sct is None:
        raise ValueError(f"case {index + 1} ({entry}): no sct column (one of {', '.join(_ALIASES['sct'])})")
    return Case(str(entry.get("case") or strip_image_suffix(sct)), sct, get("reference"), get("mask"), get("source"),
                get("source_labels"))


def read_cases(spec: str | Path, reference_dir: str | Path | None = None, mask_dir: str | Path | None = None,
               section: str = "test") -> list[Case]:
    """The cases of a test set, from

    - a CSV with a header row: ``case, sct, reference, mask, source, source_labels`` (only
      ``sct`` required; paths relative to the CSV's folder);
    - an MSD-style ``dataset.json``: the ``section`` list (``"test"``; ``"training"`` when absent)
      of objects with the same keys (``image`` for ``sct``, ``label`` for ``source_labels`` also
      accepted);
    - a folder of ``medgan translate`` outputs: each output with its sidecar; the source is the
      sidecar's input, its labels ``<source stem>_labels.<ext>`` beside it when present, the
      reference ``<reference_dir>/<source stem>.<ext>`` and the mask ``<mask_dir>/<source stem>.<ext>``.

    Raises:
        FileNotFoundError: ``spec`` does not exist.
        ValueError: an unreadable or empty list.
    """
    import csv

    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such case list or folder")
    if p.is_dir():
        cases = []
        for side in sorted(p.glob("*.json")):
            try:
                meta = json.loads(side.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(meta, dict) or "input" not in meta or "outputs" not in meta:
                continue
            main = next((n for n in meta["outputs"] if n.endswith(".nii.gz") and not n.endswith("_seg.nii.gz")), None)
            if main is None:
                continue
            src = Path(meta["input"])
            stem, suffix = strip_image_suffix(src), image_suffix(src) if src.suffix else ""
            labels = src.parent / f"{stem}_labels{suffix}"

            def find(folder: str | Path | None) -> Path | None:
                if folder is None:
                    return None
                hits = sorted(x for x in Path(folder).iterdir() if is_image_path(x) and strip_image_suffix(x) == stem)
                return hits[0] if hits else Path(folder) / f"{stem}.nii.gz"  # missing: reported for this case

            cases.append(Case(strip_image_suffix(p / main), p / main, find(reference_dir), find(mask_dir), src,
                              labels if labels.is_file() else None))
        if not cases:
            raise ValueError(f"{p}: no medgan translate outputs (an output with its .json sidecar) in this folder")
        return cases
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        cases = [_case_from({k.strip().lower(): (v or "").strip() for k, v in r.items() if k}, p.parent, i) for i, r in enumerate(rows)]
    else:
        try:
            table = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{p}: not a CSV or a readable dataset.json ({err})") from err
        items = table.get(section) or table.get("training") or []
        cases = [_case_from(e if isinstance(e, dict) else {"sct": e}, p.parent, i) for i, e in enumerate(items)]
    if not cases:
        raise ValueError(f"{p}: lists no cases")
    return cases


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def aggregate(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric over the cases that have it (NaN left out): mean, std, min, 25pc, median, 75pc,
    max, count; the statistics a SynthRAD2025 leaderboard reports."""
    flat = [_flatten({k: v for k, v in r.items() if k not in ("case",)}) for r in results]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for k in keys:
        v = np.array([f[k] for f in flat if k in f and np.isfinite(f[k])], dtype=np.float64)
        if v.size:
            out[k] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                      "25pc": float(np.percentile(v, 25)), "median": float(np.median(v)),
                      "75pc": float(np.percentile(v, 75)), "max": float(v.max()), "count": int(v.size)}
    return out


def _mean(d: dict[str, float]) -> float:
    v = [x for x in d.values() if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate_case(case: Case, tr: Translator | None, direction: str | None, figures: Path | None,
                  real_hu: dict[str, np.ndarray] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """One case's metrics (and the sCT's HU per organ, for the set's distributions).

    Image metrics (SynthRAD2025, :func:`medgan.metrics.paired_metrics`) need ``reference``;
    segmentation metrics need the model ``tr``: Dice and HD95 (mm) of S_target on the sCT
    against S_target on the reference (SynthRAD2025's segmentation metric, with S_CT standing in
    for TotalSegmentator) and against the source's labels (shape preservation)."""
    from medgan.metrics import body_mask, hd95_per_class
    from medgan.viz import ras_view, save_case_figure, save_hu_distributions

    sct = read_volume(case.sct)
    grid = (sct.affine, sct.array.shape)
    spacing = sct.spacing_mm
    res: dict = {"case": case.case, "sct": str(case.sct)}
    ref = mask = None
    if case.reference is not None:
        ref = onto_grid(read_volume(case.reference), *grid, "exact")
        if case.mask is not None:
            mask = onto_grid(read_volume(case.mask, check_values=False), *grid, "nearest") > 0
            res["mask"] = str(case.mask)
        else:
            mask = body_mask(ref)
            res["mask"] = MASK_RULE
        res.update(paired_metrics(sct.array, ref, mask))
    organ_hu: dict[str, np.ndarray] = {}
    if tr is not None and direction is not None:
        src, tgt = tr.parse_direction(direction)
        classes = tr.classes
        pred = tr.segment_volume(sct, tgt)
        if ref is not None:
            pred_ref = tr.segment_volume(Volume(ref, sct.affine, str(case.reference)), tgt)
            res["seg_dice"] = dice_per_class(pred, pred_ref, classes)
            res["seg_hd95_mm"] = hd95_per_class(pred, pred_ref, classes, spacing)
            res["seg_dice_mean"], res["seg_hd95_mean_mm"] = _mean(res["seg_dice"]), _mean(res["seg_hd95_mm"])
        if case.source_labels is not None:
            lab = _classes_on(tr, src, case.source_labels, sct, res, "source_labels")
            res["dice"] = dice_per_class(pred, lab, classes)
            res["hd95_mm"] = hd95_per_class(pred, lab, classes, spacing)
            res["dice_mean"], res["hd95_mean_mm"] = _mean(res["dice"]), _mean(res["hd95_mm"])
            organ_hu = {c: sct.array[lab == i].astype(np.float32) for i, c in enumerate(classes, 1) if (lab == i).any()}
            res["organ_median"] = {c: float(np.median(v)) for c, v in organ_hu.items()}
    if figures is not None:
        rows = []
        view = lambda a: ras_view(a, sct.affine)[0]  # noqa: E731
        _, sp = ras_view(sct.array, sct.affine)
        if case.source is not None and case.source.exists():
            s = onto_grid(read_volume(case.source), *grid, "exact")
            lo, hi = np.percentile(s, [1, 99])
            rows.append(("source", view(s), "gray", lo, hi, None))
        rows.append(("sCT (HU)", view(sct.array), "gray", -400, 600, "HU"))
        if ref is not None:
            rows.append(("reference (HU)", view(ref), "gray", -400, 600, "HU"))
            diff = np.where(mask, np.abs(sct.array - ref), 0)
            rows.append(("|sCT - reference| in the mask", view(diff), "magma", 0, 300, "|difference| HU"))
        centre = None
        if mask is not None and mask.any():
            centre = tuple(int(c) for c in np.round(np.argwhere(view(mask.astype(np.uint8))).mean(0)))
        res["figure"] = str(save_case_figure(figures / f"{case.case}_slices.png", rows, sp, centre))
        if organ_hu:
            res["hu_figure"] = str(save_hu_distributions(
                figures / f"{case.case}_organ_hu.png",
                {c: (v, (real_hu or {}).get(c)) for c, v in organ_hu.items()}, f"{case.case}: sCT HU per organ vs real CT"))
    return res, organ_hu


def real_ct_hu(tr: Translator, direction: str, datalist: list[dict]) -> dict[str, np.ndarray]:
    """HU of labelled real target-domain volumes (``{image, label}`` entries), pooled per organ."""
    _, tgt = tr.parse_direction(direction)
    pooled: dict[str, list[np.ndarray]] = {}
    for e in datalist:
        if not e.get("label"):
            continue
        img = read_volume(e["image"])
        lab = _classes_on(tr, tgt, e["label"], img)
        for i, c in enumerate(tr.classes, 1):
            v = img.array[lab == i]
            if v.size:
                pooled.setdefault(c, []).append(v.astype(np.float32))
    return {c: np.concatenate(v) for c, v in pooled.items()}


def evaluate_set(
    cases: list[Case], output_dir: str | Path, checkpoint: str | Path | None = None, direction: str | None = None,
    real_ct: str | Path | None = None, device: str = "auto", figures: bool = True,
) -> dict:
    """Evaluate a test set; writes ``metrics.json`` (SynthRAD2025's layout: ``results`` per case and
    ``aggregates`` per metric: mean, std, min, 25pc, median, 75pc, max, count), ``metrics.csv``
    (one row per case), ``metrics.md`` (the tables, linking each case's figures) and
    ``figures/``. A case that fails is listed under ``failed`` with the reason; the rest go on.

    Args:
        checkpoint, direction: the model that made the sCTs; without them only the image metrics.
        real_ct: labelled real volumes of the target domain (a folder with ``<name>_labels`` beside
            each image, or an MSD ``dataset.json``): per-organ HU realism of the whole set, as the
            absolute difference of the pooled medians and the Wasserstein-1 distance (HU) between
            the pooled sCT HU inside the sources' labels and the real volumes' HU inside theirs.

    Raises:
        ValueError: every case failed, or ``real_ct`` without a model.
    """
    from scipy.stats import wasserstein_distance

    from medgan.data.datalist import datalist_from_folder, datalist_from_msd

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = open_translator(checkpoint, device) if checkpoint is not None else None
    if (tr is None) != (direction is None):
        raise ValueError("give both the checkpoint and the direction of the model that made the sCTs, or neither")
    real = None
    if real_ct is not None:
        if tr is None:
            raise ValueError("per-organ HU realism (real_ct) needs the model's label tables: pass its checkpoint")
        rc = Path(real_ct)
        real = real_ct_hu(tr, direction, datalist_from_folder(rc) if rc.is_dir() else datalist_from_msd(rc))
    results, failed, pooled = [], [], {}
    for case in cases:
        try:
            res, organ_hu = evaluate_case(case, tr, direction, out / "figures" if figures else None, real)
        except Exception as err:  # noqa: BLE001 - one broken case must not stop the set
            msg = str(err) if str(case.sct) in str(err) or "/" in str(err) else f"{case.sct}: {err}"
            logger.error("case %s failed: %s", case.case, msg)
            failed.append({"case": case.case, "error": msg})
            continue
        results.append(res)
        for c, v in organ_hu.items():
            pooled.setdefault(c, []).append(v)
    if not results:
        raise ValueError("every case failed: " + "; ".join(f"{f['case']}: {f['error']}" for f in failed))
    report: dict = {"results": results, "aggregates": aggregate(results), "failed": failed,
                    "definitions": {"image": "SynthRAD2025 (github.com/SynthRAD2025/metrics, functions/image_metrics.py at "
                                              "0beef65): MAE in HU in the mask; PSNR over the mask clipped to [-1024, 3000] HU, "
                                              "range 4024; masked 5-level MS-SSIM", "mask": MASK_RULE + " unless a mask is given",
                                    "segmentation": SEG_NOTE, "hd95": "MONAI compute_hausdorff_distance, percentile 95, in mm"}}
    if real is not None:
        report["organ_hu"] = {
            c: {"sct_median": float(np.median(s := np.concatenate(v))), "real_median": float(np.median(real[c])),
                "abs_median_diff": abs(float(np.median(s)) - float(np.median(real[c]))),
                "wasserstein1_hu": float(wasserstein_distance(s, real[c])), "sct_voxels": int(s.size), "real_voxels": int(real[c].size)}
            for c, v in pooled.items() if c in real
        }
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    _write_case_csv(results, out / "metrics.csv")
    atomic_write_text(out / "metrics.md", markdown_report(report, out))
    return report


def _write_case_csv(results: list[dict], path: Path) -> None:
    flat = [{"case": r["case"], **_flatten({k: v for k, v in r.items() if k != "case"})} for r in results]
    cols = list(dict.fromkeys(k for f in flat for k in f))
    lines = [",".join(cols)] + [",".join("" if k not in f else (f[k] if isinstance(f[k], str) else f"{f[k]:.6g}") for k in cols) for f in flat]
    atomic_write_text(path, "\n".join(lines) + "\n")


def markdown_report(report: dict, out: Path) -> str:
    """The per-case, aggregate and organ-HU tables of :func:`evaluate_set` as Markdown."""
    def f(v, fmt=".2f") -> str:  # noqa: ANN001
        return "" if v is None else ("n/a" if isinstance(v, float) and math.isnan(v) else format(v, fmt))

    def link(p: str | None, text: str) -> str:
        return f"[{text}]({Path(p).relative_to(out)})" if p else ""

    lines = ["# Evaluation", "", "| case | MAE (HU) | PSNR (dB) | MS-SSIM | Dice (shape) | HD95 (mm, shape) | "
             "Dice (S on sCT vs CT) | figures |", "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['case']} | {f(r.get('mae_hu'))} | {f(r.get('psnr_db'))} | {f(r.get('ms_ssim'), '.4f')} | "
                     f"{f(r.get('dice_mean'), '.3f')} | {f(r.get('hd95_mean_mm'), '.1f')} | {f(r.get('seg_dice_mean'), '.3f')} | "
                     f"{link(r.get('figure'), 'slices')} {link(r.get('hu_figure'), 'organ HU')} |")
    lines += ["", "| metric | mean | std | min | 25pc | median | 75pc | max | n |", "|---|---|---|---|---|---|---|---|---|"]
    for k, a in report["aggregates"].items():
        lines.append(f"| {k} | " + " | ".join(f(a[s], ".4g") for s in ("mean", "std", "min", "25pc", "median", "75pc", "max"))
                     + f" | {a['count']} |")
    if report.get("organ_hu"):
        lines += ["", "Per-organ HU of the sCTs (inside the sources' labels) against the real labelled CTs:", "",
                  "| organ | sCT median | real median | abs. diff | Wasserstein-1 (HU) |", "|---|---|---|---|---|"]
        for c, o in report["organ_hu"].items():
            lines.append(f"| {c} | {f(o['sct_median'], '.1f')} | {f(o['real_median'], '.1f')} | {f(o['abs_median_diff'], '.1f')} | "
                         f"{f(o['wasserstein1_hu'], '.1f')} |")
    if report["failed"]:
        lines += ["", "Failed cases:", ""] + [f"- {x['case']}: {x['error']}" for x in report["failed"]]
    lines += ["", "Definitions: " + "; ".join(f"{k}: {v}" for k, v in report["definitions"].items())]
    return "\n".join(lines) + "\n"


__all__ = ["Case", "aggregate", "evaluate", "evaluate_case", "evaluate_set", "read_cases", "report_rows", "write_report"]
