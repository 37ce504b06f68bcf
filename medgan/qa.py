"""Quality-assurance sheet of a translated scan: may the physicist trust this synthetic CT?

Per scan (``medgan translate --qa``): a PNG with orthogonal slices of the input and the output
(and the test-time-augmentation spread) through the segmented anatomy, with the segmentation's
outlines; the output's HU histogram inside the body and per organ against the training CTs'; and
a list of warnings. Per batch: one HTML page, ``qa.html``, of every scan's sheet
(:func:`write_batch_page`).

Warnings (each names the number, the training range and the margin it was held to):

- **out of distribution**: the scan's voxel size, field of view, body size and extent, or the
  model-input intensity percentiles inside the body lie outside what the model was trained on.
  The training volumes' statistics (:func:`scan_statistics`) are gathered at training time and
  stored in the checkpoint's ``meta.json`` (``training_stats``, :func:`training_statistics`).
- **intensities**: an organ's median output HU lies outside the 5th-95th percentile range of that
  organ in the training CTs.
- **uncertainty**: with ``--tta N``, the mean per-voxel standard deviation over the flips inside
  the body exceeds :data:`UNCERTAIN_STD_HU`.

These are warnings of a model's domain, not a dose check: a sheet without warnings does not prove
an sCT right, it says that nothing medgan can measure without a reference CT looks unusual.
"""

from __future__ import annotations

import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medgan.data.intensity import SOFT_TISSUE_WINDOW

#: model-input intensity percentiles inside the body (in %)
PERCENTILES: tuple[float, ...] = (5.0, 50.0, 95.0)
#: HU histogram bins over the CT domain's window (training CTs and outputs alike)
HIST_BINS = 100
#: size-like statistics (voxel size, field of view, body size/extent) warn this far beyond the
#: training volumes' [min, max] range, relative: [min / (1 + m), max * (1 + m)]
RELATIVE_MARGIN = 0.2
#: model-input percentiles (units of the networks' [-1, 1] scale) warn this far beyond the range
INTENSITY_MARGIN = 0.1
#: a mean test-time-augmentation standard deviation inside the body above this (HU) warns
UNCERTAIN_STD_HU = 50.0

#: grey levels of a synthetic CT on the sheet: the soft-tissue window the DICOM output sets
DISPLAY_WINDOW_HU = (SOFT_TISSUE_WINDOW[0] - SOFT_TISSUE_WINDOW[1] / 2, SOFT_TISSUE_WINDOW[0] + SOFT_TISSUE_WINDOW[1] / 2)

_AXES = ("R-L", "A-P", "S-I")
#: statistic -> (label, unit, relative margin (True) or absolute intensity margin (False))
_CHECKED = {
    "spacing_mm": ("voxel size", "mm", True),
    "fov_mm": ("field of view", "mm", True),
    "body_extent_mm": ("body extent", "mm", True),
    "body_volume_ml": ("body volume", "mL", True),
    "input_percentiles": ("model-input intensity percentile", "", False),
}


def ras_spacing_and_fov(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], list[float]]:
    """Voxel size and field of view (mm) of a grid along its closest R-L, A-P, S-I axes."""
    import nibabel as nib

    order = nib.orientations.io_orientation(affine)[:, 0].argsort()
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)[order]
    fov = spacing * np.asarray(shape, dtype=float)[order]
    return [round(float(s), 4) for s in spacing], [round(float(f), 2) for f in fov]


def hu_histogram(values: np.ndarray, window: tuple[float, float]) -> list[int]:
    """Counts of ``values`` (HU) in :data:`HIST_BINS` equal bins over ``window``; values outside
    the window (none for a windowed CT or a generator's output) are not counted."""
    counts, _ = np.histogram(values, bins=HIST_BINS, range=window)
    return [int(c) for c in counts]


def scan_statistics(
    model_input: np.ndarray, body: np.ndarray, grid_spacing_mm: Sequence[float], affine: np.ndarray, shape: Sequence[int],
    hu: np.ndarray | None = None, window: tuple[float, float] | None = None,
    labels: np.ndarray | None = None, classes: Sequence[str] = (),
) -> dict:
    """What the out-of-distribution checks compare, of one scan.

    Args:
        model_input: ``(D, H, W)`` the networks' input in [-1, 1] (training grid: RAS, training spacing).
        body: ``(D, H, W)`` bool body mask on the same grid.
        grid_spacing_mm: voxel size of that grid (mm) along D, H, W.
        affine, shape: the scan's own grid (RAS affine in mm, ``(I, J, K)``), for voxel size and
            field of view.
        hu: ``(D, H, W)`` the scan in HU (CT domains) for its histograms and percentiles, with the
            domain's HU ``window``; ``labels`` ``(D, H, W)`` class indices (1.. = ``classes``).

    Returns:
        ``spacing_mm``, ``fov_mm``, ``body_extent_mm`` (R-L, A-P, S-I), ``body_volume_ml``,
        ``input_percentiles`` (:data:`PERCENTILES` of the model input inside the body); for CT
        also ``hu_percentiles`` and ``hu_histogram`` (``"body"`` and each labelled class).
    """
    spacing, fov = ras_spacing_and_fov(affine, shape)
    stats: dict = {"spacing_mm": spacing, "fov_mm": fov}
    if body.any():
        idx = np.nonzero(body)
        stats["body_extent_mm"] = [round(float(i.max() - i.min() + 1) * float(s), 1) for i, s in zip(idx, grid_spacing_mm)]
        stats["body_volume_ml"] = round(float(body.sum()) * float(np.prod(grid_spacing_mm)) / 1000.0, 1)
        stats["input_percentiles"] = [round(float(p), 4) for p in np.percentile(model_input[body], PERCENTILES)]
    if hu is not None and window is not None:
        regions = {"body": body}
        if labels is not None:
            regions.update({name: labels == c for c, name in enumerate(classes, start=1)})
        regions = {k: m for k, m in regions.items() if m.any()}
        stats["hu_percentiles"] = {k: [round(float(p), 1) for p in np.percentile(hu[m], PERCENTILES)] for k, m in regions.items()}
        stats["hu_histogram"] = {k: hu_histogram(hu[m], window) for k, m in regions.items()}
        stats["hu_window"] = [float(window[0]), float(window[1])]
    return stats


def training_statistics(per_volume: list[dict]) -> dict:
    """The training volumes' statistics of one domain, as stored in the checkpoint: their number,
    each statistic's per-component ``[min, max]`` range, pooled HU percentile ranges (min of the
    5th, max of the 95th percentile) and summed HU histograms."""
    out: dict = {"n_volumes": len(per_volume), "ranges": {}}
    for key in _CHECKED:
        vals = [np.atleast_1d(np.asarray(v[key], dtype=float)) for v in per_volume if key in v]
        if vals:
            arr = np.stack(vals)
            out["ranges"][key] = [arr.min(0).round(4).tolist(), arr.max(0).round(4).tolist()]
    hists = [v["hu_histogram"] for v in per_volume if "hu_histogram" in v]
    if hists:
        out["hu_window"] = next(v["hu_window"] for v in per_volume if "hu_window" in v)
        regions = sorted({k for h in hists for k in h})
        out["hu_histogram"] = {k: np.sum([h[k] for h in hists if k in h], axis=0).astype(int).tolist() for k in regions}
        pcts = [v["hu_percentiles"] for v in per_volume if "hu_percentiles" in v]
        out["hu_range_p5_p95"] = {k: [min(p[k][0] for p in pcts if k in p), max(p[k][-1] for p in pcts if k in p)]
                                  for k in regions}
    return out


def _fmt(v: float, unit: str) -> str:
    return f"{v:.3g} {unit}".strip()


def out_of_distribution(stats: dict, training: dict | None) -> list[str]:
    """Warnings for each statistic of ``stats`` (:func:`scan_statistics`) outside the
    ``training`` ranges (:func:`training_statistics`) widened by :data:`RELATIVE_MARGIN` or
    :data:`INTENSITY_MARGIN`. A checkpoint without training statistics gives one warning saying
    the checks were not made."""
    if not training or not training.get("ranges"):
        return ["out-of-distribution checks not made: this checkpoint stores no training statistics "
                "(trained with medgan < 0.4); retrain to enable them"]
    warnings = []
    for key, (label, unit, relative) in _CHECKED.items():
        if key not in stats or key not in training["ranges"]:
            continue
        lo, hi = (np.atleast_1d(np.asarray(r, dtype=float)) for r in training["ranges"][key])
        val = np.atleast_1d(np.asarray(stats[key], dtype=float))
        if relative:
            a, b, margin = lo / (1 + RELATIVE_MARGIN), hi * (1 + RELATIVE_MARGIN), f"+-{RELATIVE_MARGIN:.0%}"
        else:
            a, b, margin = lo - INTENSITY_MARGIN, hi + INTENSITY_MARGIN, f"+-{INTENSITY_MARGIN}"
        names = _AXES if val.size == 3 and key != "input_percentiles" else (
            [f"p{p:g}" for p in PERCENTILES] if key == "input_percentiles" else [""])
        for i, v in enumerate(val):
            if not a[i] <= v <= b[i]:
                where = f" ({names[i]})" if names[i] else ""
                warnings.append(f"out of distribution: {label}{where} {_fmt(v, unit)} outside the training range "
                                f"{_fmt(lo[i], unit)} .. {_fmt(hi[i], unit)} ({margin}, {training['n_volumes']} training volumes)")
    return warnings


@dataclass
class ScanQA:
    """One scan's QA result: the figures of the sidecar (``summary``), its warnings, the PNG."""

    summary: dict
    warnings: list[str] = field(default_factory=list)
    png: bytes = b""


def _centre(body: np.ndarray, seg: np.ndarray | None) -> tuple[int, int, int]:
    """Voxel the slices go through: centre of the segmented organs, else of the body, else the middle."""
    for m in ((seg > 0) if seg is not None else None, body):
        if m is not None and m.any():
            return tuple(int(round(float(i.mean()))) for i in np.nonzero(m))  # type: ignore[return-value]
    return tuple(s // 2 for s in body.shape)  # type: ignore[return-value]


def _views(vol: np.ndarray, c: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a ``(D, H, W)`` RAS volume through ``c``, rows up."""
    return [vol[:, :, c[2]].T, vol[:, c[1], :].T, vol[c[0], :, :].T]


def _figure(rows: list[tuple[str, np.ndarray, str, float, float]], seg: np.ndarray | None, classes: Sequence[str],
            spacing: Sequence[float], centre: tuple[int, int, int], hists: list[tuple[str, np.ndarray, np.ndarray | None]],
            window: tuple[float, float] | None, title: str) -> bytes:
    # the object API without pyplot: sheets are drawn in the batch's writer threads at once, and
    # pyplot's global figure state is not thread-safe
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    sx, sy, sz = spacing
    aspects = [sy / sx, sz / sx, sz / sy]
    colours = colormaps["tab10"]
    n_hist = len(hists)
    fig = Figure(figsize=(12, 3.2 * len(rows) + (3.0 if n_hist else 0) + 0.4))
    top, bottom = (fig.subfigures(2, 1, height_ratios=[3.2 * len(rows), 3.0]) if n_hist else (fig, None))
    axes = top.subplots(len(rows), 3, squeeze=False)
    segs = _views(seg, centre) if seg is not None else [None] * 3
    for r, (name, vol, cmap, lo, hi) in enumerate(rows):
        for c, (sl, ls, view) in enumerate(zip(_views(vol, centre), segs, ("axial", "coronal", "sagittal"))):
            ax = axes[r][c]
            im = ax.imshow(sl, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect=aspects[c], interpolation="nearest")
            if ls is not None:
                for k, _ in enumerate(classes, start=1):
                    if (ls == k).any():
                        ax.contour(ls == k, levels=[0.5], colors=[colours((k - 1) % 10)], linewidths=0.8)
            ax.set_title(f"{name} ({view})", fontsize=8)
            ax.axis("off")
        top.colorbar(im, ax=list(axes[r]), shrink=0.8, pad=0.01)
    if seg is not None and classes:
        handles = [Line2D([], [], color=colours((k - 1) % 10), label=n) for k, n in enumerate(classes, start=1)]
        top.legend(handles=handles, loc="lower center", ncol=min(len(classes), 8), fontsize=8, frameon=False)
    if bottom is not None and window is not None:
        hax = bottom.subplots(1, n_hist, squeeze=False)[0]
        edges = np.linspace(window[0], window[1], HIST_BINS + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        for ax, (name, out_counts, train_counts) in zip(hax, hists):
            for counts, label, style in ((out_counts, "this sCT", "-"), (train_counts, "training CTs", "--")):
                if counts is not None and np.sum(counts) > 0:
                    ax.plot(centres, np.asarray(counts) / np.sum(counts), style, label=label, linewidth=1)
            ax.set_title(f"HU in {name}", fontsize=8)
            ax.set_xlim(max(window[0], -1050.0), min(window[1], 1600.0))
            ax.set_xlabel("HU", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_yticks([])
        hax[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    return buf.getvalue()


def scan_qa(
    title: str, input_image: np.ndarray, output: np.ndarray, body: np.ndarray, spacing_mm: Sequence[float],
    input_stats: dict, training: dict | None, output_units: str, hu_window: tuple[float, float] | None = None,
    seg: np.ndarray | None = None, classes: Sequence[str] = (), std: np.ndarray | None = None,
) -> ScanQA:
    """The QA sheet of one translated scan, all on the model's grid (RAS, ``spacing_mm``).

    Args:
        title: the sheet's heading (scan and direction).
        input_image: ``(D, H, W)`` model input in [-1, 1]; ``output`` ``(D, H, W)`` in
            ``output_units`` (HU when ``hu_window`` is given: a synthetic CT).
        body: ``(D, H, W)`` bool body mask; ``seg`` ``(D, H, W)`` class indices of the output's
            segmentation (1.. = ``classes``) or ``None``; ``std`` ``(D, H, W)`` TTA standard
            deviation in ``output_units`` or ``None``.
        input_stats: :func:`scan_statistics` of the input; ``training``: the checkpoint's
            statistics of the source domain and (``"target"`` key) of the target domain.
    """
    training = training or {}
    warnings = out_of_distribution(input_stats, training.get("source"))
    target = training.get("target") or {}
    summary: dict = {"input": input_stats}
    hists = []
    if hu_window is not None:
        regions = {"body": body}
        if seg is not None:
            regions.update({n: seg == c for c, n in enumerate(classes, start=1)})
        medians, absent = {}, []
        for name, m in regions.items():
            if not m.any():
                absent += [name] if name != "body" else []
                continue
            medians[name] = round(float(np.median(output[m])), 1)
            ref = target.get("hu_range_p5_p95", {}).get(name)
            if ref is not None and not ref[0] <= medians[name] <= ref[1]:
                warnings.append(f"intensities: median output HU in {name} {medians[name]:.0f} lies outside the training "
                                f"CTs' 5th-95th percentile range {ref[0]:.0f} .. {ref[1]:.0f} HU")
            train_counts = target.get("hu_histogram", {}).get(name)
            hists.append((name, np.asarray(hu_histogram(output[m], hu_window)), train_counts))
        summary["median_hu"] = medians
        if absent:
            warnings.append(f"segmentation: no {', '.join(absent)} found in the output")
    if std is not None and body.any():
        mean_std = round(float(std[body].mean()), 2)
        summary["tta_mean_std_in_body"] = mean_std
        if mean_std > UNCERTAIN_STD_HU:
            warnings.append(f"uncertainty: mean test-time-augmentation standard deviation inside the body {mean_std:.1f} "
                            f"{output_units} > {UNCERTAIN_STD_HU:g}")
    lo, hi = (DISPLAY_WINDOW_HU if hu_window is not None else tuple(np.percentile(output, [1, 99])))
    rows = [("input", input_image, "gray", -1.0, 1.0), (f"output ({output_units})", output, "gray", float(lo), float(hi))]
    if std is not None:
        rows.append((f"TTA std ({output_units})", std, "magma", 0.0, float(max(np.percentile(std[body], 99) if body.any() else 1.0, 1e-6))))
    centre = _centre(body, seg)
    png = _figure(rows, seg, classes, spacing_mm, centre, hists[:7], hu_window, title)
    summary["warnings"] = warnings
    return ScanQA(summary=summary, warnings=warnings, png=png)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #bbb; padding: 3px 8px; font-size: 13px; text-align: left; }}
.warn {{ color: #a40000; }} .ok {{ color: #1a6e1a; }}
section {{ border-top: 2px solid #ddd; padding-top: 0.8em; margin-top: 1.2em; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>{intro}</p>
<table><tr><th>scan</th><th>warnings</th>{organ_heads}<th>TTA mean std in body</th></tr>
{rows}
</table>
{sections}
</body></html>
"""


def write_batch_page(out_dir: str | Path, sidecars: list[Path], title: str = "medgan QA") -> Path:
    """Write ``out_dir/qa.html`` (atomically): a table of every scan whose sidecar in ``sidecars``
    has a ``qa`` entry (warnings, median output HU per organ, TTA spread), then each scan's
    warnings and sheet (the PNG beside it). Opens in any browser from the folder."""
    from medgan.io.writers import atomic_write_text

    out = Path(out_dir)
    entries = []
    for p in sorted(sidecars):
        try:
            meta = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if "qa" in meta:
            entries.append((Path(p), meta))
    organs: list[str] = []
    for _, m in entries:
        organs += [k for k in m["qa"].get("median_hu", {}) if k not in organs]
    rows, sections = [], []
    for p, m in entries:
        qa, stem = m["qa"], html.escape(p.stem)
        n = len(qa.get("warnings", []))
        cls = "warn" if n else "ok"
        cells = "".join(f"<td>{qa.get('median_hu', {}).get(o, '')}</td>" for o in organs)
        std = qa.get("tta_mean_std_in_body", "")
        rows.append(f'<tr><td><a href="#{stem}">{stem}</a></td><td class="{cls}">{n}</td>{cells}<td>{std}</td></tr>')
        warn = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in qa.get("warnings", [])) or '<li class="ok">none</li>'
        src = html.escape(str(m.get("input", "")))
        img = html.escape(next((n for n in m.get("outputs", {}) if n.endswith("_qa.png")), ""))
        sections.append(f'<section id="{stem}"><h2>{stem}</h2><p>input: {src}<br>model: '
                        f'{html.escape(str(m.get("checkpoint", "")))} ({html.escape(str(m.get("direction", "")))})</p>'
                        f'<ul>{warn}</ul><img src="{img}" alt="QA sheet of {stem}"></section>')
    heads = "".join(f"<th>median HU {html.escape(o)}</th>" for o in organs)
    intro = (f"{len(entries)} scans, page written {time.strftime('%Y-%m-%d %H:%M:%S')}. Warnings compare each scan with the "
             "volumes the model was trained on (statistics stored in its checkpoint); no warnings does not prove an sCT "
             "right, it says nothing measurable without a reference CT looks unusual.")
    page = _PAGE.format(title=html.escape(title), intro=html.escape(intro), organ_heads=heads, rows="\n".join(rows),
                        sections="\n".join(sections))
    return atomic_write_text(out / "qa.html", page)
