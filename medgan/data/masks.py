"""Body masks: where the patient is, in a CT (HU threshold) and in an MR (Otsu threshold).

Both keep the largest connected component and fill holes in 3D and slice by slice along each
axis, so lungs, airways and bowel gas (dark in both modalities), open at the volume's ends, stay
inside the body. The CT rule is SynthRAD2025's kind of body mask; the MR rule is medgan's
own (no library offers one): it decides where a synthetic CT is air (:mod:`medgan.pipelines.cyclegan.translate`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, lab, range(1, n + 1))
        mask = lab == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        filled = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
        mask |= np.moveaxis(filled, 0, axis)
    return mask


def body_mask(ct_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """Body mask of a CT ``(I, J, K)`` in HU: voxels above ``threshold_hu``, largest component,
    holes filled (3D and per slice along each axis). Returns bool ``(I, J, K)``."""
    return _largest_filled(ct_hu > threshold_hu)


def mr_body_mask(mr: np.ndarray) -> np.ndarray:
    """Body mask of an MR ``(I, J, K)`` in any intensity scale: voxels above the Otsu threshold
    (scikit-image ``threshold_otsu``, of the voxels above the 1st percentile so a zero-padded
    field of view does not pull it down), opened by one voxel to cut noise bridges, largest
    component, holes filled (3D and per slice along each axis). Returns bool ``(I, J, K)``;
    all False for a constant image."""
    from skimage.filters import threshold_otsu

    v = mr[np.isfinite(mr)]
    if v.size == 0 or float(v.max()) == float(v.min()):
        return np.zeros(mr.shape, dtype=bool)
    above = v[v > np.percentile(v, 1)]
    v = above if above.size else v
    mask = ndimage.binary_opening(mr > threshold_otsu(v), iterations=1)
    return _largest_filled(mask) if mask.any() else mask
