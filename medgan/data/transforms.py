"""Volumes to the networks' frame and back, and patch sampling for training.

Axis convention (used by every docstring in medgan): tensors are channel first, ``(C, D, H, W)``
for one volume and ``(B, C, D, H, W)`` for a batch, where the three spatial axes are the voxel
axes after MONAI's ``Orientation("RAS")``: D runs Left->Right, H Posterior->Anterior and
W Inferior->Superior. ``patch_size`` and ``roi_size`` are given in that order, in voxels at the
configured ``spacing_mm``.

The forward path (:func:`to_canonical`) is MONAI ``Orientation`` + ``Spacing``; the way back
(:func:`to_input_grid`) resamples onto the input's own affine and shape with MONAI
``SpatialResample``, so outputs sit exactly on the input grid whatever its orientation
(oblique included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    FgBgToIndicesd,
    Orientation,
    RandCropByPosNegLabeld,
    RandSpatialCropd,
    Spacing,
    SpatialPad,
    SpatialResample,
)

from medgan.data.intensity import IntensityScaling, ScalingKind, fit_scaling
from medgan.data.labels import LabelMapper
from medgan.io import Volume, read_label_map, read_volume
from medgan.keys import Keys


def to_canonical(volume: Volume, spacing_mm: Sequence[float], mode: str = "bilinear") -> MetaTensor:
    """``(I, J, K)`` volume -> ``(1, D, H, W)`` MetaTensor in RAS at ``spacing_mm`` (mm).

    ``mode`` is ``"bilinear"`` for images and ``"nearest"`` for label maps.
    """
    arr, aff = volume.array, np.asarray(volume.affine, dtype=np.float64)
    if arr.flags["F_CONTIGUOUS"] and not arr.flags["C_CONTIGUOUS"]:
        # nibabel returns Fortran-ordered arrays: list the same voxels in memory order (reversed
        # axes, affine columns reversed to match) instead of copying (1.7 s for a 512x512x275 CT);
        # Orientation("RAS") below brings the axes to the same frame either way.
        arr, aff = arr.T, aff[:, [2, 1, 0, 3]]
    img = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(arr))[None],
        affine=torch.as_tensor(aff, dtype=torch.float64),
        meta={"filename_or_obj": volume.path},
    )
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    img = Spacing(pixdim=tuple(float(s) for s in spacing_mm), mode=mode, padding_mode="border")(img)
    return img


def to_input_grid(
    canonical: torch.Tensor, canonical_affine: torch.Tensor, affine: np.ndarray, shape: Sequence[int], mode: str
) -> np.ndarray:
    """``(C, D, H, W)`` in the canonical frame -> ``(C, I, J, K)`` numpy on the input's grid.

    Args:
        canonical: values on the canonical grid.
        canonical_affine: its RAS affine (4x4, mm).
        affine, shape: the input volume's RAS affine and ``(I, J, K)`` shape.
        mode: ``"bilinear"`` for intensities, ``"nearest"`` for labels.

    Outside the canonical grid values are taken from its border. When the input's axes are
    parallel to the canonical ones (any flip, permutation or spacing: every non-oblique scan) the
    trilinear/nearest interpolation is done axis by axis, which needs no sampling grid (MONAI's
    ``SpatialResample`` builds one of 3 x the output size); oblique inputs go through
    ``SpatialResample``. Both give the same values (see tests/data/test_transforms.py).
    """
    data = canonical.as_tensor() if isinstance(canonical, MetaTensor) else canonical
    data = data.detach().float().cpu()
    can_aff = np.asarray(torch.as_tensor(canonical_affine, dtype=torch.float64))
    vox = np.linalg.solve(can_aff, np.asarray(affine, dtype=np.float64))  # input voxel -> canonical voxel
    lin = vox[:3, :3]
    perm = np.abs(lin).argmax(axis=0)  # canonical axis that each input axis runs along
    off = lin.copy()
    off[perm, range(3)] = 0
    if sorted(perm) == [0, 1, 2] and np.abs(off).max() < 1e-6:
        return _separable_resample(data, vox, perm, shape, mode)
    src = MetaTensor(data, affine=torch.as_tensor(can_aff, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="border")(
        src, dst_affine=torch.as_tensor(affine, dtype=torch.float64), spatial_size=tuple(int(s) for s in shape)
    )
    return out.as_tensor().numpy()


def labels_to_input_grid(
    labels: torch.Tensor, canonical_affine: torch.Tensor, affine: np.ndarray, shape: Sequence[int], dtype: type = np.uint8
) -> np.ndarray:
    """Class indices ``(D, H, W)`` on the canonical grid -> ``(I, J, K)`` on the input's grid
    (nearest neighbour), as ``dtype``."""
    out = to_input_grid(torch.as_tensor(labels)[None].float(), canonical_affine, affine, shape, "nearest")[0]
    return out.round().astype(dtype)


def _separable_resample(data: torch.Tensor, vox: np.ndarray, perm: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    """Axis-aligned resampling by 1D interpolation along each axis (border padding)."""
    # order the canonical axes as the input axes: canonical axis perm[a] becomes output axis a
    x = data.permute(0, *(int(p) + 1 for p in perm))
    for a in range(3):
        n_src = x.shape[a + 1]
        pos = torch.as_tensor(vox[perm[a], a] * np.arange(shape[a]) + vox[perm[a], 3], dtype=torch.float64)
        pos = pos.clamp(0, n_src - 1)
        if mode == "nearest":
            x = x.index_select(a + 1, torch.round(pos).long().clamp(0, n_src - 1))  # half to even, as grid_sample
            continue
        i0 = pos.floor().long().clamp(0, n_src - 1)
        i1 = (i0 + 1).clamp(max=n_src - 1)
        w = (pos - i0).float().view(*[-1 if d == a + 1 else 1 for d in range(4)])
        x = torch.lerp(x.index_select(a + 1, i0), x.index_select(a + 1, i1), w)
    return x.contiguous().numpy()


@dataclass
class DomainPreprocessor:
    """Reads one domain's volumes into the training frame.

    Args:
        spacing_mm: target voxel size (mm) along D, H, W.
        scaling_kind: ``"window"`` (CT, HU) or ``"percentile"`` (MR), see :mod:`medgan.data.intensity`.
        window: HU window for ``"window"``.
        percentiles: percentiles (in %) for ``"percentile"``.
        label_mapper: raw ids -> shared classes; ``None`` when the domain has no labels.
    """

    spacing_mm: Sequence[float]
    scaling_kind: ScalingKind
    window: tuple[float, float] = (-1024.0, 2000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    label_mapper: LabelMapper | None = None

    def scaling_for(self, volume: Volume) -> IntensityScaling:
        """This volume's intensity scaling (fixed window, or its own percentiles)."""
        return fit_scaling(volume.array, self.scaling_kind, self.window, self.percentiles)

    def image(self, volume: Volume) -> tuple[MetaTensor, IntensityScaling]:
        """Volume -> ``(1, D, H, W)`` in [-1, 1] on the canonical grid, and its scaling."""
        scaling = self.scaling_for(volume)
        img = to_canonical(volume, self.spacing_mm, "bilinear")
        return scaling.forward(img), scaling

    def training_volume(self, entry: dict, patch_size: Sequence[int], exclude_inferior: float = 0.0) -> tuple[dict, IntensityScaling]:
        """A datalist entry -> dict with ``image (1, D, H, W)``, ``label (1, D, H, W)`` class
        indices (zeros when unlabelled), ``has_label`` and foreground/background indices, padded
        to at least ``patch_size`` (image with -1, label with 0). ``exclude_inferior`` drops that
        fraction of axial slices from the inferior end (a held-out slab) before padding."""
        vol = read_volume(entry[Keys.IMAGE.value])
        image, scaling = self.image(vol)
        # without a label mapping (no classes configured) labels are not used: unsupervised CycleGAN
        label_path = entry.get(Keys.LABEL.value) if self.label_mapper is not None else None
        if label_path:
            lab = read_label_map(label_path, vol)
            lab.array = self.label_mapper(lab.array, lab.path).astype(np.float32)
            label = to_canonical(lab, self.spacing_mm, "nearest")
        else:
            label = torch.zeros_like(image)
        if exclude_inferior > 0:
            k = held_out_slices(image.shape[-1], exclude_inferior)
            image, label = image[..., k:], label[..., k:]
        image = SpatialPad(spatial_size=patch_size, value=-1.0)(image)
        label = SpatialPad(spatial_size=patch_size, value=0.0)(label)
        item = {
            Keys.IMAGE.value: image.as_tensor().float(),
            Keys.LABEL.value: label.as_tensor().round().long(),
            Keys.HAS_LABEL.value: bool(label_path),
        }
        if label_path:
            item = FgBgToIndicesd(keys=Keys.LABEL.value)(item)
        return item, scaling


def held_out_slices(n_slices: int, fraction: float) -> int:
    """Number of inferior axial slices in a held-out slab of ``fraction`` (at least 1 when > 0)."""
    return max(1, int(round(n_slices * fraction))) if fraction > 0 else 0


class PatchDataset(torch.utils.data.Dataset):
    """Item ``i`` is a patch drawn deterministically from ``(seed, i)``: a random volume, then a
    crop centred on labelled anatomy with probability ``pos / (pos + neg)`` (labelled volumes) or
    anywhere (unlabelled ones). Stateless, so a resumed run draws exactly the patches an
    uninterrupted run would.

    Returns dicts with ``image (1, *patch_size)`` float32 in [-1, 1], ``label (1, *patch_size)``
    int64 class indices, ``has_label`` bool.
    """

    def __init__(
        self, volumes: list[dict], patch_size: Sequence[int], seed: int, length: int, pos: float = 2.0, neg: float = 1.0
    ) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes, self.seed, self.length = volumes, int(seed), int(length)
        keys = [Keys.IMAGE.value, Keys.LABEL.value]
        self.labelled_crop = RandCropByPosNegLabeld(
            keys=keys, label_key=Keys.LABEL.value, spatial_size=list(patch_size), pos=pos, neg=neg,
            fg_indices_key=Keys.FG_INDICES.value, bg_indices_key=Keys.BG_INDICES.value,
        )
        self.random_crop = RandSpatialCropd(keys=keys, roi_size=list(patch_size), random_size=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        vol = self.volumes[int(rng.integers(len(self.volumes)))]
        labelled = vol[Keys.HAS_LABEL.value] and len(vol[Keys.FG_INDICES.value]) > 0
        crop = self.labelled_crop if labelled else self.random_crop
        crop.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = crop(vol)
        out = out[0] if isinstance(out, list) else out
        # plain tensors: MetaTensors would carry their metadata into batches, pools and checkpoints
        return {
            Keys.IMAGE.value: _plain(out[Keys.IMAGE.value]).float().contiguous(),
            Keys.LABEL.value: _plain(out[Keys.LABEL.value]).long().contiguous(),
            Keys.HAS_LABEL.value: vol[Keys.HAS_LABEL.value],
        }


def _plain(x) -> torch.Tensor:  # noqa: ANN001
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
