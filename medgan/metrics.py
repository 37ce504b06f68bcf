"""Evaluation metrics (no gradients; each states the data range it assumes).

- :func:`dice_per_class`: Dice of two class-index maps, per class, via MONAI ``compute_dice``.
- :func:`intensity_stats_per_class`: mean / median / std of intensities inside each class.
- :func:`body_mask`: the body in a CT (HU > -500, largest component, holes filled).
- :func:`paired_metrics`: MAE in HU inside a body mask; PSNR and SSIM over [-1024, 3071] HU with
  data range 4095 HU (SynthRAD 2025 definitions).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

HU_RANGE = (-1024.0, 3071.0)


def dice_per_class(pred: np.ndarray, target: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Dice per class (index ``i + 1`` is ``classes[i]``) of two ``(I, J, K)`` class-index maps.
    A class absent from both gives NaN (not counted), absent from one gives 0."""
    k = len(classes) + 1
    p = one_hot(torch.as_tensor(pred, dtype=torch.long)[None, None], k)
    t = one_hot(torch.as_tensor(target, dtype=torch.long)[None, None], k)
    d = compute_dice(p, t, include_background=False, ignore_empty=True)[0]
    return {c: float(v) for c, v in zip(classes, d)}


def intensity_stats_per_class(image: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    """``{class: {mean, median, std, voxels}}`` of ``image`` (e.g. HU) inside each present class."""
    out = {}
    for i, c in enumerate(classes, start=1):
        v = image[labels == i]
        if v.size:
            out[c] = {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()), "voxels": int(v.size)}
    return out


def body_mask(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Body mask of a CT in HU: voxels above ``threshold_hu``, largest component, holes filled in
    3D and slice by slice along each axis (so airways and bowel gas open at the volume's ends are
    inside the body)."""
    mask = ct_hu > threshold_hu
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        filled = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
        mask |= np.moveaxis(filled, 0, axis)
    return mask


def paired_metrics(sct_hu: np.ndarray, ct_hu: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """MAE (HU) inside ``mask`` (default: :func:`body_mask` of the reference), PSNR (dB) and SSIM
    over the whole volume, both images clipped to [-1024, 3071] HU, data range 4095 HU."""
    if sct_hu.shape != ct_hu.shape:
        raise ValueError(f"synthetic CT shape {sct_hu.shape} differs from reference CT shape {ct_hu.shape}")
    mask = body_mask(ct_hu) if mask is None else mask.astype(bool)
    lo, hi = HU_RANGE
    a, b = np.clip(sct_hu, lo, hi).astype(np.float64), np.clip(ct_hu, lo, hi).astype(np.float64)
    rng = hi - lo
    with np.errstate(divide="ignore"):  # identical volumes: PSNR is +inf, not a warning
        psnr = float(peak_signal_noise_ratio(b, a, data_range=rng))
    return {
        "mae_hu": float(np.abs(sct_hu[mask] - ct_hu[mask]).mean()),
        "psnr_db": psnr,
        "ssim": float(structural_similarity(b, a, data_range=rng)),
        "body_voxels": int(mask.sum()),
    }
