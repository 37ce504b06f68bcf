"""PNG figures of three orthogonal mid-slices (axial, coronal, sagittal), with label overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
                ax.imshow(np.ma.masked_where(ls == 0, ls), cmap="tab20", alpha=0.4, origin="lower",
                          aspect=aspects[c], interpolation="nearest", vmin=0, vmax=20)
            ax.set_title(f"{title} ({view})", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
