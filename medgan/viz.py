"""PNG figures of three orthogonal mid-slices (axial, coronal, sagittal), with label overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib figure
    """Write ``fig`` as PNG (folders created) and close it."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal mid-slices of a ``(D, H, W)`` RAS volume, for display (rows up)."""
    d, h, w = (s // 2 for s in vol.shape)
    return [vol[:, :, w].T, vol[:, h, :].T, vol[d, :, :].T]


def save_orthogonal_slices(
    path: str | Path,
    rows: list[tuple[str, np.ndarray, np.ndarray | None]],
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Path:
    """One row per ``(title, volume (D, H, W), labels (D, H, W) or None)``, three columns of
    mid-slices; volumes in RAS order (as after ``to_canonical``) and shown in mm aspect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing_mm
    aspects = [sy / sx, sz / sx, sz / sy]
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (title, vol, lab) in enumerate(rows):
        lo, hi = np.percentile(vol, [1, 99]) if vol.max() > vol.min() else (vol.min(), vol.min() + 1)
        labs = _slices(lab) if lab is not None else [None] * 3
        for c, (sl, ls, view) in enumerate(zip(_slices(vol), labs, ("axial", "coronal", "sagittal"))):
            ax = axes[r][c]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspects[c], interpolation="nearest")
            if ls is not None and ls.max() > 0:
                ax.imshow(np.ma.masked_where(ls <= 0, ls), cmap="tab20", alpha=0.4, origin="lower",
                          aspect=aspects[c], interpolation="nearest", vmin=0, vmax=20)
            ax.set_title(f"{title} ({view})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def ras_view(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``array (I, J, K)`` with its affine -> the same voxels flipped/permuted to the closest RAS
    axis order (no resampling), and the voxel size in mm along those axes; for display only."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    view = nib.orientations.apply_orientation(array, ornt)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].argsort()]
    return view, tuple(float(s) for s in spacing)  # type: ignore[return-value]


def save_case_figure(
    path: str | Path, rows: list[tuple[str, np.ndarray, str, float, float, str | None]],
    spacing_mm: tuple[float, float, float], centre: tuple[int, int, int] | None = None,
) -> Path:
    """One row per ``(title, volume (D, H, W) in RAS order, colormap, vmin, vmax, colour-bar label
    or None)``, three columns (axial, coronal, sagittal) through ``centre`` (default: the middle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing_mm
    aspects = [sy / sx, sz / sx, sz / sy]
    fig, axes = plt.subplots(len(rows), 3, figsize=(10, 3 * len(rows)), squeeze=False)
    for r, (title, vol, cmap, lo, hi, bar) in enumerate(rows):
        d, h, w = centre if centre is not None else (s // 2 for s in vol.shape)
        for c, (sl, view) in enumerate(zip((vol[:, :, w].T, vol[:, h, :].T, vol[d, :, :].T), ("axial", "coronal", "sagittal"))):
            ax = axes[r][c]
            im = ax.imshow(sl, cmap=cmap, vmin=lo, vmax=hi, origin="lower", aspect=aspects[c], interpolation="nearest")
            ax.set_title(f"{title} ({view})", fontsize=8)
            ax.axis("off")
        if bar:
            fig.colorbar(im, ax=list(axes[r]), shrink=0.8, label=bar)
    return _save(fig, path)


def save_hu_distributions(path: str | Path, organs: dict[str, tuple[np.ndarray, np.ndarray | None]], title: str) -> Path:
    """Per organ, the histogram of synthetic-CT HU against that of real CTs (``None``: no real
    CT), as densities on a common 10-HU binning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(organs))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (organ, (synthetic, real)) in zip(axes.flat, organs.items()):
        both = np.concatenate([synthetic, real]) if real is not None and real.size else synthetic
        lo, hi = np.percentile(both, [0.5, 99.5]) if both.size else (-100, 100)
        bins = np.arange(np.floor(lo / 10) * 10, np.ceil(hi / 10) * 10 + 10, 10)
        ax.hist(synthetic, bins=bins, density=True, alpha=0.6, label="sCT")
        if real is not None and real.size:
            ax.hist(real, bins=bins, density=True, alpha=0.6, label="real CT")
        ax.set_title(organ, fontsize=9)
        ax.set_xlabel("HU", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(organs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_strip(path: str | Path, volumes: list[np.ndarray], titles: list[str], spacing_mm: tuple[float, float, float],
               title: str = "") -> Path:
    """One column per ``(D, H, W)`` RAS volume (a latent walk), rows axial, coronal, sagittal
    mid-slices, all on one grey scale (the 1st-99th percentiles of them all)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing_mm
    aspects = [sy / sx, sz / sx, sz / sy]
    lo, hi = np.percentile(np.concatenate([v.ravel() for v in volumes]), [1, 99])
    fig, axes = plt.subplots(3, len(volumes), figsize=(1.8 * len(volumes), 5.6), squeeze=False)
    for c, (vol, t) in enumerate(zip(volumes, titles)):
        for r, sl in enumerate(_slices(vol)):
            ax = axes[r][c]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspects[r], interpolation="nearest")
            ax.axis("off")
            if r == 0:
                ax.set_title(t, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def save_tradeoff(path: str | Path, rows: list[dict]) -> Path:
    """Diversity against intensity error, one point per truncation threshold (``None``: untruncated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    x = [r["diversity_mean_abs_diff"] for r in rows]
    y = [r["intensity_abs_diff_mean"] for r in rows]
    ax.plot(x, y, "o-")
    for xi, yi, r in zip(x, y, rows):
        ax.annotate("none" if r["truncation"] is None else f"{r['truncation']:g}", (xi, yi), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("diversity: mean |difference| between samples of one label map")
    ax.set_ylabel("fidelity error: mean |sample - real| class mean")
    ax.set_title("CVAE truncation trade-off (label: threshold)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
