"""Evaluation metrics (no gradients; each states the data range it assumes).

- :func:`dice_per_class`: Dice of two class-index maps, per class, via MONAI ``compute_dice``.
- :func:`intensity_stats_per_class`: mean / median / std of intensities inside each class.
- :func:`body_mask`: the body in a CT (HU > -500, largest component, holes filled).
- :func:`paired_metrics`: SynthRAD2025's MAE (HU), PSNR (dB) and masked MS-SSIM of a synthetic
  CT against its registered CT, inside a mask (:func:`synthrad_mae`, :func:`synthrad_psnr`,
  :func:`synthrad_ms_ssim`: clipped to [-1024, 3000] HU, data range 4024 HU).
- :func:`hd95_per_class`: 95th-percentile Hausdorff distance in mm (MONAI).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio

from medgan.data.masks import body_mask


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


#: SynthRAD2025's HU range for PSNR and MS-SSIM (github.com/SynthRAD2025/metrics,
#: ``functions/image_metrics.py`` at commit 0beef65): both images clipped to it, data range 4024 HU.
#: (The challenge's evaluation container at one point used [-1024, 3071].)
SYNTHRAD_HU_RANGE = (-1024.0, 3000.0)
#: MS-SSIM level weights of Wang, Simoncelli & Bovik, "Multiscale structural similarity for image
#: quality assessment", Asilomar 2003, as SynthRAD2025 uses them
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: each axis is padded (edge values) to at least this size so five levels of 7^3 windows fit
MS_SSIM_MIN_SIZE = 97


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


def synthrad_mae(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray) -> float:
    """SynthRAD2025 MAE in HU: both images set to -1024 HU outside the mask (binarised at > 0),
    then ``sum(|ct m - sct m|) / sum(m)``; no clipping."""
    m = _binary(mask)
    if not m.any():
        raise ValueError("the mask is empty: MAE is undefined")
    d = np.abs(ct_hu[m].astype(np.float64) - sct_hu[m].astype(np.float64))
    return float(d.sum() / m.sum())


def synthrad_psnr(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray, hu_range=SYNTHRAD_HU_RANGE) -> float:  # noqa: ANN001
    """SynthRAD2025 PSNR in dB: both images clipped to ``hu_range``, over the mask's voxels only,
    data range ``hu_range[1] - hu_range[0]`` (4024 HU); +inf for identical images."""
    lo, hi = hu_range
    m = _binary(mask)
    a = np.clip(ct_hu[m].astype(np.float64), lo, hi)
    b = np.clip(sct_hu[m].astype(np.float64), lo, hi)
    with np.errstate(divide="ignore"):  # identical: +inf, not a warning
        return float(peak_signal_noise_ratio(a, b, data_range=hi - lo))


def _lcs_map(x: np.ndarray, y: np.ndarray, weight: float, data_range: float, win: int = 7) -> np.ndarray:
    """Per-voxel ``L^w C^w S^w`` of SSIM (Wang et al., TIP 2004, Eqs. 6, 9, 10) with a ``win``^3
    uniform window (scipy ``uniform_filter``, reflecting borders), sample covariance N/(N-1),
    K1 = 0.01, K2 = 0.03, C3 = C2/2; L, C and S each clipped below at 0 (as SynthRAD2025)."""
    n = win ** x.ndim
    cov = n / (n - 1)
    ux, uy = ndimage.uniform_filter(x, win), ndimage.uniform_filter(y, win)
    vx = cov * (ndimage.uniform_filter(x * x, win) - ux * ux)
    vy = cov * (ndimage.uniform_filter(y * y, win) - uy * uy)
    vxy = cov * (ndimage.uniform_filter(x * y, win) - ux * uy)
    sx, sy = np.sqrt(np.maximum(vx, 0)), np.sqrt(np.maximum(vy, 0))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    c3 = c2 / 2
    lum = np.maximum((2 * ux * uy + c1) / (ux * ux + uy * uy + c1), 0)
    con = np.maximum((2 * sx * sy + c2) / (vx + vy + c2), 0)
    struct = np.maximum((vxy + c3) / (sx * sy + c3), 0)
    return lum ** weight * con ** weight * struct ** weight


def synthrad_ms_ssim(ct_hu: np.ndarray, sct_hu: np.ndarray, mask: np.ndarray, hu_range=SYNTHRAD_HU_RANGE,  # noqa: ANN001
                     weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> float:
    """SynthRAD2025's masked multi-scale SSIM of two ``(I, J, K)`` volumes in HU.

    Both are clipped to ``hu_range``, set to its lower end outside the mask (binarised at > 0)
    and shifted to start at 0; images and mask are padded alike (edge values) to at least
    :data:`MS_SSIM_MIN_SIZE` voxels per axis. At each of the five levels the SSIM map
    (:func:`_lcs_map`, the level's weight as the exponent of luminance, contrast and structure
    alike, data range 4024 HU) is averaged inside the mask after cropping 3 voxels at every border;
    then both images are filtered with a 2x2x2 box (FFT convolution, same size) and images and
    mask subsampled by 2 along every axis. The result is the product of the level values, each
    clipped to [0, 1] (Wang, Simoncelli & Bovik, Asilomar 2003, Eq. 7).
    """
    from scipy.signal import fftconvolve

    lo, hi = hu_range
    m = _binary(mask)
    x = np.where(m, np.clip(ct_hu.astype(np.float64), lo, hi), lo) - lo
    y = np.where(m, np.clip(sct_hu.astype(np.float64), lo, hi), lo) - lo
    pads = [(max(0, (MS_SSIM_MIN_SIZE - n) // 2), max(0, MS_SSIM_MIN_SIZE - n - (MS_SSIM_MIN_SIZE - n) // 2)) for n in x.shape]
    x, y, m = np.pad(x, pads, mode="edge"), np.pad(y, pads, mode="edge"), np.pad(m, pads, mode="edge")
    box = np.ones((2,) * x.ndim) / 2 ** x.ndim
    crop = (slice(3, -3),) * x.ndim
    values = []
    for level, w in enumerate(weights):
        ssim_map = _lcs_map(x, y, w, hi - lo)
        values.append(float(ssim_map[crop][m[crop]].mean(dtype=np.float64)))
        if level < len(weights) - 1:
            sub = (slice(None, None, 2),) * x.ndim
            x, y = fftconvolve(x, box, mode="same")[sub], fftconvolve(y, box, mode="same")[sub]
            m = m[sub]
    return float(np.prod(np.clip(values, 0, 1)))


def paired_metrics(sct_hu: np.ndarray, ct_hu: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """SynthRAD2025's image metrics of a synthetic CT against its registered CT (same grid):
    ``mae_hu`` (:func:`synthrad_mae`), ``psnr_db`` (:func:`synthrad_psnr`), ``ms_ssim``
    (:func:`synthrad_ms_ssim`), inside ``mask`` (binarised at > 0), by default the body mask
    of the reference CT (:func:`body_mask`: HU > -500, largest component, holes filled);
    ``mask_voxels`` counts it.

    Raises:
        ValueError: the shapes differ, or the mask is empty.
    """
    if sct_hu.shape != ct_hu.shape:
        raise ValueError(f"synthetic CT shape {sct_hu.shape} differs from reference CT shape {ct_hu.shape}")
    m = body_mask(ct_hu) if mask is None else _binary(mask)
    if m.shape != ct_hu.shape:
        raise ValueError(f"mask shape {m.shape} differs from the CT's {ct_hu.shape}")
    return {
        "mae_hu": synthrad_mae(ct_hu, sct_hu, m),
        "psnr_db": synthrad_psnr(ct_hu, sct_hu, m),
        "ms_ssim": synthrad_ms_ssim(ct_hu, sct_hu, m),
        "mask_voxels": int(m.sum()),
    }


def hd95_per_class(pred: np.ndarray, target: np.ndarray, classes: list[str], spacing_mm) -> dict[str, float]:  # noqa: ANN001
    """95th-percentile Hausdorff distance in mm per class (index ``i + 1`` is ``classes[i]``) of
    two ``(I, J, K)`` class-index maps on one grid of voxel size ``spacing_mm``, by MONAI
    ``compute_hausdorff_distance`` (symmetric: the larger of the two directed 95th percentiles
    of surface distances). NaN where the class is absent from either map."""
    from monai.metrics import compute_hausdorff_distance

    k = len(classes) + 1
    p = one_hot(torch.as_tensor(pred, dtype=torch.long)[None, None], k)
    t = one_hot(torch.as_tensor(target, dtype=torch.long)[None, None], k)
    out = {}
    for i, c in enumerate(classes, start=1):
        if not p[0, i].any() or not t[0, i].any():
            out[c] = float("nan")
            continue
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
            warnings.simplefilter("ignore", FutureWarning)
            d = compute_hausdorff_distance(p[:, [0, i]], t[:, [0, i]], include_background=False, percentile=95,
                                           spacing=[float(s) for s in spacing_mm])
        out[c] = float(d[0, 0])
    return out
