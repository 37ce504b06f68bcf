"""A digital abdominal phantom: CT in HU and a T1-like MR with organ labels.

Each subject is a set of ellipsoids and cylinders in world millimetres (RAS: +x right,
+y anterior, +z superior) -- body with a subcutaneous fat layer, liver, spleen, kidneys, aorta,
vertebral body with cortical rim and spinal cord, autochthonous back muscles -- randomly scaled,
rotated and shifted per subject. CT values follow typical portal-venous HU; MR values follow
T1-weighted contrast (fat bright, flowing blood dark, cortical bone dark) with a smooth bias
field and Rician noise. MR volumes are stored in LPS orientation (as a scanner would) so that
reorientation is exercised. ``data_samples/make_phantom.py`` writes the shipped samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medgan.io import write_nifti

#: Label ids of the phantom (one label space shared by CT and MR).
PHANTOM_CLASSES = {
    1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left", 5: "aorta",
    6: "vertebrae", 7: "spinal_cord", 8: "autochthon_right", 9: "autochthon_left",
}
_FAT, _SOFT, _CORTEX = 20, 21, 22  # unlabelled tissues (internal codes)
#: (CT HU, MR T1 a.u.) per tissue; 0 is air.
_VALUES = {
    0: (-1000.0, 5.0), _FAT: (-100.0, 900.0), _SOFT: (40.0, 400.0), _CORTEX: (900.0, 60.0),
    1: (100.0, 560.0), 2: (110.0, 380.0), 3: (160.0, 450.0), 4: (160.0, 450.0), 5: (150.0, 80.0),
    6: (250.0, 620.0), 7: (30.0, 470.0), 8: (50.0, 330.0), 9: (50.0, 330.0),
}


def _subject(rng: np.random.Generator) -> dict:
    """Random geometry of one subject (mm)."""
    return {
        "scale": rng.uniform(0.9, 1.1, size=3),
        "angle": np.deg2rad(rng.uniform(-8, 8)),
        "shift": np.r_[rng.uniform(-8, 8, size=2), rng.uniform(-6, 6)],
        "jitter": {k: rng.uniform(0.88, 1.12, size=3) for k in range(1, 10)},
    }


def phantom_tissues(shape: tuple[int, int, int], spacing_mm: float, subject: dict) -> np.ndarray:
    """Tissue codes ``(I, J, K)`` on a RAS grid centred at the origin."""
    idx = [(np.arange(n) - (n - 1) / 2) * spacing_mm for n in shape]
    x, y, z = np.meshgrid(*idx, indexing="ij")
    c, s = np.cos(subject["angle"]), np.sin(subject["angle"])
    x, y, z = x - subject["shift"][0], y - subject["shift"][1], z - subject["shift"][2]
    x, y = c * x + s * y, -s * x + c * y
    sc = subject["scale"]
    x, y, z = x / sc[0], y / sc[1], z / sc[2]
    t = np.zeros(shape, dtype=np.int16)

    def ellipsoid(cx: float, cy: float, cz: float, rx: float, ry: float, rz: float, key: int | None = None) -> np.ndarray:
        j = subject["jitter"].get(key, np.ones(3)) if key else np.ones(3)
        return ((x - cx) / (rx * j[0])) ** 2 + ((y - cy) / (ry * j[1])) ** 2 + ((z - cz) / (rz * j[2])) ** 2 <= 1

    def cylinder(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1

    t[cylinder(0, 0, 150, 105)] = _FAT
    t[cylinder(0, 0, 135, 90)] = _SOFT
    t[ellipsoid(60, 15, 20, 75, 60, 65, 1)] = 1  # liver: right, anterior, superior
    t[ellipsoid(-78, -15, 25, 30, 40, 45, 2)] = 2  # spleen: left, posterior
    t[ellipsoid(55, -42, -12, 24, 17, 45, 3)] = 3  # right kidney (lower)
    t[ellipsoid(-55, -42, -4, 24, 17, 45, 4)] = 4  # left kidney
    t[ellipsoid(35, -70, 0, 18, 20, 400, 8)] = 8  # autochthon right
    t[ellipsoid(-35, -70, 0, 18, 20, 400, 9)] = 9  # autochthon left
    t[cylinder(0, -48, 22, 20)] = _CORTEX
    t[cylinder(0, -48, 18, 16)] = 6  # vertebral body (cancellous); rim is cortical bone
    t[cylinder(0, -75, 7, 7)] = _CORTEX
    t[cylinder(0, -75, 5, 5)] = 7  # spinal cord in its canal
    t[cylinder(-16, -22, 11, 11)] = 5  # aorta, left of the midline
    return t


def tissues_to_labels(tissues: np.ndarray) -> np.ndarray:
    """Label map (ids of :data:`PHANTOM_CLASSES`, 0 elsewhere); cortical rim counts as vertebrae."""
    lab = np.where(tissues < _FAT, tissues, 0).astype(np.uint8)
    lab[tissues == _CORTEX] = 6
    return lab


def render(tissues: np.ndarray, modality: str, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """CT (HU, int16) or MR (T1-like a.u., int16) intensities for a tissue map."""
    col = 0 if modality == "ct" else 1
    vol = np.zeros(tissues.shape, dtype=np.float32)
    for code, values in _VALUES.items():
        vol[tissues == code] = values[col]
    vol = gaussian_filter(vol, 0.6)  # partial-volume blur
    if modality == "ct":
        vol += rng.normal(0, 12, vol.shape)
        return np.clip(np.round(vol), -1024, 3071).astype(np.int16)
    grid = np.meshgrid(*[np.linspace(0, np.pi, n) for n in vol.shape], indexing="ij")
    phase = rng.uniform(0, np.pi, 3)
    bias = 1 + 0.15 * np.sin(grid[0] + phase[0]) * np.cos(grid[1] + phase[1]) + 0.05 * np.sin(grid[2] + phase[2])
    vol = vol * bias
    vol = np.sqrt((vol + rng.normal(0, 12, vol.shape)) ** 2 + rng.normal(0, 12, vol.shape) ** 2)  # Rician
    return np.round(vol).astype(np.int16)


def _affine(shape: tuple[int, int, int], spacing_mm: float, orientation: str) -> tuple[np.ndarray, tuple[slice, ...]]:
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = -(np.asarray(shape) - 1) / 2 * spacing_mm
    flips: tuple[slice, ...] = (slice(None),) * 3
    if orientation == "LPS":  # flip x and y: voxel i runs right->left, j anterior->posterior
        flips = (slice(None, None, -1), slice(None, None, -1), slice(None))
        aff[:2, :2] *= -1
        aff[:2, 3] *= -1
    return aff, flips


def make_phantom_subject(
    modality: str, seed: int, shape: tuple[int, int, int] = (80, 64, 32), spacing_mm: float = 4.0,
    orientation: str = "RAS", geometry_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One subject: ``(image (I, J, K) int16, labels (I, J, K) uint8, affine 4x4 RAS mm)``.

    ``geometry_seed`` fixes the anatomy independently of the noise, so a CT and an MR of the
    same subject (a registered pair) can be made.
    """
    subject = _subject(np.random.default_rng(seed if geometry_seed is None else geometry_seed))
    tissues = phantom_tissues(shape, spacing_mm, subject)
    image = render(tissues, modality, np.random.default_rng(seed + 10_000), spacing_mm)
    labels = tissues_to_labels(tissues)
    aff, flips = _affine(shape, spacing_mm, orientation)
    return image[flips], labels[flips], aff


def write_phantom_dataset(out: str | Path) -> list[Path]:
    """Write the shipped sample set: 2 CT (one unlabelled) and 2 MR subjects for training, a CT of
    the first MR subject as a paired reference (``paired/``), a held-out subject that no training
    config reads (``heldout/``: an MR and its paired CT, both labelled, for results on a subject
    no training step saw), and ``classmap.json``."""
    root = Path(out)
    written = []
    plan = [
        ("ct/phantom-ct-01", "ct", 1, "RAS", True, None),
        ("ct/phantom-ct-02", "ct", 2, "RAS", False, None),
        ("mr/phantom-mr-01", "mr", 3, "LPS", True, None),
        ("mr/phantom-mr-02", "mr", 4, "LPS", True, None),
        ("paired/phantom-mr-01_ct", "ct", 5, "LPS", True, 3),
        ("heldout/phantom-mr-03", "mr", 6, "LPS", True, None),
        ("heldout/phantom-mr-03_ct", "ct", 7, "LPS", True, 6),
    ]
    for name, modality, seed, orient, with_labels, geometry in plan:
        img, lab, aff = make_phantom_subject(modality, seed, orientation=orient, geometry_seed=geometry)
        written.append(write_nifti(root / f"{name}.nii.gz", img, aff))
        if with_labels:
            written.append(write_nifti(root / f"{name}_labels.nii.gz", lab, aff))
    table = {"_source": "medgan digital abdominal phantom (medgan.data.phantom)", "phantom": {str(k): v for k, v in PHANTOM_CLASSES.items()}}
    (root / "classmap.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    written.append(root / "classmap.json")
    return written
