"""Evaluation of a translated volume.

(a) **Shape preservation** (Zhang et al. 2018): Dice per class between the target-domain
    segmenter's labels of the translated volume and the source volume's own labels.
(b) **Realism without a paired reference**: per-organ intensity statistics (HU for a synthetic
    CT) inside the source's labels, against the same statistics of a real labelled volume of the
    target domain; reported as absolute differences of the means and medians.
(c) **With a paired reference** on the same grid: MAE in HU inside the body, PSNR and SSIM over
    [-1024, 3071] HU (SynthRAD 2025).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from medgan.data.transforms import onto_grid
from medgan.io import Volume, atomic_write_text, read_label_map, read_volume
from medgan.metrics import dice_per_class, intensity_stats_per_class, paired_metrics
from pipelines.cyclegan.translate import Translator

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
    tr = translator or Translator(checkpoint, device)
    src, tgt = tr.parse_direction(direction)
    vol = read_volume(translated)
    report: dict = {"translated": str(translated), "direction": f"{src}->{tgt}", "checkpoint": str(tr.folder)}
    classes = tr.classes
    src_lab = None
    if source_labels is not None:
        mapper = tr.preprocessor(src).label_mapper
        if mapper is None:
            raise ValueError(f"{tr.folder}: model has no label mapping for domain {src}")
        raw = read_label_map(source_labels)
        src_lab = mapper(_labels_on(raw, vol, report, "source_labels"), raw.path)
        pred = tr.segment_volume(vol, tgt)
        report["dice"] = dice_per_class(pred, src_lab, classes)
        valid = [v for v in report["dice"].values() if not math.isnan(v)]
        report["dice_mean"] = float(np.mean(valid)) if valid else float("nan")
    if reference is not None and reference_labels is not None and src_lab is not None:
        ref = read_volume(reference)
        ref_raw = read_label_map(reference_labels)
        ref_lab = tr.preprocessor(tgt).label_mapper(_labels_on(ref_raw, ref, report, "reference_labels"), ref_raw.path)
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


def _labels_on(labels: Volume, image: Volume, report: dict, name: str) -> np.ndarray:
    """``labels`` on ``image``'s voxels by world position (nearest neighbour; background outside
    the label map); a resampling is logged and recorded in the report."""
    out = onto_grid(labels, image.affine, image.array.shape, "nearest")
    if out is not labels.array:
        logger.warning("%s: on another voxel grid than %s; matched by world position (nearest neighbour)", labels.path, image.path)
        report.setdefault("resampled", {})[name] = f"{labels.path} -> grid of {image.path} (nearest neighbour, world coordinates)"
    return out


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


__all__ = ["evaluate", "report_rows", "write_report"]
