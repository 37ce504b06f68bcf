"""Volumes to the networks' frame and back, and patch sampling for training.

Axis convention (used by every docstring in medgan): tensors are channel first, ``(C, D, H, W)``
for one volume and ``(B, C, D, H, W)`` for a batch, where the three spatial axes are the voxel
axes after MONAI's ``Orientation("RAS")``: D runs Left->Right, H Posterior->Anterior and
W Inferior->Superior. ``patch_size`` and ``roi_size`` are given in that order, in voxels at the
configured ``spacing_mm``.

The forward path (:func:`to_canonical`) is on the grid of MONAI ``Orientation("RAS")`` +
``Spacing``; the way back (:func:`to_input_grid`) resamples onto the input's own affine and shape,
so outputs sit exactly on the input grid whatever its orientation (oblique included). Both
interpolate axis by axis (:func:`resample_axis_aligned`) wherever the two grids' axes are
parallel, and fall back to MONAI's ``SpatialResample`` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Orientation,
    RandCropByPosNegLabeld,
    RandSpatialCropd,
    Spacing,
    SpatialPad,
    SpatialResample,
)
from monai.transforms.utils import map_binary_to_indices

from medgan.data.intensity import IntensityScaling, ScalingKind, fit_scaling
from medgan.data.labels import LabelMapper, keep_largest_components
from medgan.io import Grid, Volume, read_label_map, read_volume
from medgan.io.readers import place_label_map
from medgan.keys import UNLABELLED, Keys

logger = logging.getLogger(__name__)


def to_canonical(volume: Volume, spacing_mm: Sequence[float], mode: str = "bilinear") -> MetaTensor:
    """``(I, J, K)`` volume -> ``(1, D, H, W)`` float32 MetaTensor in RAS at ``spacing_mm`` (mm).

    ``mode`` is ``"bilinear"`` for images and ``"nearest"`` for label maps. The grid (shape and
    affine) is MONAI's ``Orientation("RAS")`` + ``Spacing``, computed lazily (no voxels touched);
    the values are then interpolated axis by axis by :func:`resample_axis_aligned`, which gives
    MONAI's values (border padding) without its flip copy and 3D sampling grid.
    """
    arr, aff = volume.array, np.asarray(volume.affine, dtype=np.float64)
    if arr.flags["F_CONTIGUOUS"] and not arr.flags["C_CONTIGUOUS"]:
        # nibabel returns Fortran-ordered arrays: list the same voxels in memory order (reversed
        # axes, affine columns reversed to match) instead of copying (1.7 s for a 512x512x275 CT)
        arr, aff = arr.T, aff[:, [2, 1, 0, 3]]
    data = torch.from_numpy(np.ascontiguousarray(arr))[None]
    img = MetaTensor(data, affine=torch.as_tensor(aff, dtype=torch.float64), meta={"filename_or_obj": volume.path})
    lazy = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")), lazy=True)(img)
    lazy = Spacing(pixdim=tuple(float(s) for s in spacing_mm), mode=mode, padding_mode="border", lazy=True)(lazy)
    dst_affine = lazy.peek_pending_affine().to(torch.float64)
    dst_shape = tuple(int(s) for s in lazy.peek_pending_shape())
    dst_to_src = np.linalg.solve(aff, dst_affine.numpy())
    if not _is_axis_aligned(dst_to_src):  # Spacing keeps the input's directions: not expected
        img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
        return Spacing(pixdim=tuple(float(s) for s in spacing_mm), mode=mode, padding_mode="border")(img).float()
    out = resample_axis_aligned(data, dst_to_src, dst_shape, mode)
    return MetaTensor(torch.from_numpy(out), affine=dst_affine, meta={"filename_or_obj": volume.path})


def to_input_grid(
    canonical: torch.Tensor, canonical_affine: torch.Tensor, affine: np.ndarray, shape: Sequence[int], mode: str
) -> np.ndarray:
    """``(C, D, H, W)`` in the canonical frame -> ``(C, I, J, K)`` float32 numpy on the input's grid.

    Args:
        canonical: values on the canonical grid.
        canonical_affine: its RAS affine (4x4, mm).
        affine, shape: the input volume's RAS affine and ``(I, J, K)`` shape.
        mode: ``"bilinear"`` for intensities, ``"nearest"`` for labels.

    Outside the canonical grid values are taken from its border. When the input's axes are
    parallel to the canonical ones (any flip, permutation or spacing: every non-oblique scan)
    :func:`resample_axis_aligned` interpolates axis by axis, which needs no sampling grid (MONAI's
    ``SpatialResample`` builds one of 3 x the output size); oblique inputs go through
    ``SpatialResample``. Both give the same values (see tests/data/test_transforms.py). The
    spatial axes of the result are Fortran-ordered (``[0]`` is an F-contiguous ``(I, J, K)``
    array), the order NIfTI stores, so writing it needs no transposed copy.
    """
    data = canonical.as_tensor() if isinstance(canonical, MetaTensor) else canonical
    data = data.detach().float().cpu()
    can_aff = np.asarray(torch.as_tensor(canonical_affine, dtype=torch.float64))
    vox = np.linalg.solve(can_aff, np.asarray(affine, dtype=np.float64))  # input voxel -> canonical voxel
    if _is_axis_aligned(vox):
        return resample_axis_aligned(data, vox, shape, mode, fortran=True)
    src = MetaTensor(data, affine=torch.as_tensor(can_aff, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="border")(
        src, dst_affine=torch.as_tensor(affine, dtype=torch.float64), spatial_size=tuple(int(s) for s in shape)
    )
    return out.as_tensor().numpy()


def labels_to_input_grid(
    labels: torch.Tensor, canonical_affine: torch.Tensor, affine: np.ndarray, shape: Sequence[int], dtype: type = np.uint8,
    largest_component_of: int = 0,
) -> np.ndarray:
    """Class indices ``(D, H, W)`` on the canonical grid -> ``(I, J, K)`` on the input's grid
    (nearest neighbour), as ``dtype``. ``largest_component_of=K``: classes ``1..K`` then keep only
    their largest connected component on that grid, the one written, whatever the resampling did
    (:func:`medgan.data.labels.keep_largest_components`; for one-organ classes)."""
    out = to_input_grid(torch.as_tensor(labels)[None].float(), canonical_affine, affine, shape, "nearest")[0]
    out = out.round().astype(dtype)
    return keep_largest_components(out, largest_component_of) if largest_component_of else out


def onto_grid(volume: Volume, affine: np.ndarray, shape: Sequence[int], mode: str = "nearest") -> np.ndarray:
    """``volume``'s values at the voxels of another grid (``affine`` RAS mm, ``shape (I, J, K)``),
    matched by world position, never by voxel index.

    Args:
        mode: ``"nearest"`` for label maps: nearest neighbour, 0 (background) where the grid lies
            outside the volume's extent; ``"exact"`` for intensities that must not be
            interpolated (a paired reference): only a grid whose voxel centres are the volume's
            own (the same voxels in another axis order or direction) is accepted, and its values
            are copied.

    Returns:
        ``(I, J, K)`` array (float32) on the given grid; ``volume.array`` itself when the grids are equal.

    Raises:
        VolumeError: ``"exact"`` and the grids do not share their voxel centres (names the file).
    """
    from medgan.io import VolumeError

    shape = tuple(int(s) for s in shape)
    vox = np.linalg.solve(np.asarray(volume.affine, np.float64), np.asarray(affine, np.float64))  # grid voxel -> volume voxel
    if volume.array.shape == shape and np.allclose(vox, np.eye(4), atol=1e-4):
        return volume.array
    src_shape = volume.array.shape
    data = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    if mode == "exact":
        lin = vox[:3, :3]
        corners = vox @ np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                                  for k in (0, shape[2] - 1)], np.float64).T
        ok = (_is_axis_aligned(vox) and np.allclose(np.abs(lin).max(axis=0), 1, atol=1e-4)
              and np.allclose(vox[:3, 3], np.round(vox[:3, 3]), atol=1e-3)
              and np.all(corners[:3] > -1e-3) and np.all(corners[:3].T < np.asarray(src_shape) - 1 + 1e-3))
        if not ok:
            raise VolumeError(
                f"{volume.path}: its grid (shape {src_shape}, affine {np.round(volume.affine, 3).tolist()}) does not "
                f"share its voxel centres with the grid {shape}, {np.round(affine, 3).tolist()}; a paired reference "
                "must be on the same voxels (resample it onto that grid first, knowing that this interpolates it)"
            )
        return resample_axis_aligned(data, vox, shape, "nearest")[0]
    if not _is_axis_aligned(vox):
        src = MetaTensor(data, affine=torch.as_tensor(volume.affine, dtype=torch.float64))
        out = SpatialResample(mode="nearest", padding_mode="zeros")(
            src, dst_affine=torch.as_tensor(affine, dtype=torch.float64), spatial_size=shape)
        return out.as_tensor().numpy()[0]
    out = resample_axis_aligned(data, vox, shape, "nearest")[0]
    perm = np.abs(vox[:3, :3]).argmax(axis=0)
    for a in range(3):  # outside the volume's extent: background, not its border values
        pos = vox[perm[a], a] * np.arange(shape[a]) + vox[perm[a], 3]
        outside = (pos < -0.5) | (pos > src_shape[perm[a]] - 0.5)
        if outside.any():
            idx = [slice(None)] * 3
            idx[a] = np.flatnonzero(outside)
            out[tuple(idx)] = 0
    return out


def _is_axis_aligned(dst_to_src: np.ndarray) -> bool:
    """True when each destination axis runs along one source axis (flips, permutations, scaling)."""
    lin = dst_to_src[:3, :3]
    perm = np.abs(lin).argmax(axis=0)
    off = lin.copy()
    off[perm, range(3)] = 0
    return sorted(perm.tolist()) == [0, 1, 2] and float(np.abs(off).max()) < 1e-6


def resample_axis_aligned(
    data: torch.Tensor, dst_to_src: np.ndarray, shape: Sequence[int], mode: str, fortran: bool = False,
    chunk_voxels: int = 1 << 19,
) -> np.ndarray:
    """Resample ``data (C, X, Y, Z)`` onto a grid whose axes are parallel to its own, by 1D
    interpolation along one axis at a time (trilinear or nearest, border padding).

    Args:
        data: source values, any dtype (interpolated in float32).
        dst_to_src: 4x4 map from destination voxel indices to source voxel coordinates; each
            destination axis must run along one source axis (flips and permutations allowed).
        shape: destination ``(I, J, K)``.
        mode: ``"bilinear"`` (trilinear) or ``"nearest"`` (rounded half to even, as
            ``grid_sample``).
        fortran: lay the result out Fortran-ordered per channel (NIfTI's order).
        chunk_voxels: voxels per chunk: temporaries stay this small whatever the volume size.

    Returns:
        ``(C, I, J, K)`` float32 numpy array.

    Written here because MONAI's ``Spacing``/``SpatialResample`` build a dense 3D sampling grid
    (3 floats per output voxel) and copy for every flip: several GiB and seconds for one CT,
    where this needs the output plus one chunk. Axes that shrink go first, so later passes work on
    less data; an axis whose source positions are exactly its indices is not touched.
    """
    lin = dst_to_src[:3, :3]
    perm = [int(p) for p in np.abs(lin).argmax(axis=0)]  # source axis that destination axis a runs along
    want = [2, 1, 0] if fortran else [0, 1, 2]  # destination axes in the order wanted in memory
    if data[0].numel() >= int(np.prod(shape)):
        # shrinking: interpolate in the source's memory order (fast gathers), reorder the small result
        layout, x = [perm.index(j) for j in range(3)], data
    else:
        layout = want
        x = data.permute(0, *(1 + perm[a] for a in layout))
    # tensor dim 1 + k holds destination axis layout[k]
    n_out = [int(shape[a]) for a in layout]
    order = sorted(range(3), key=lambda k: n_out[k] / x.shape[1 + k])
    src = x
    for k in order:
        a = layout[k]
        pos = lin[perm[a], a] * np.arange(n_out[k]) + dst_to_src[perm[a], 3]
        x = _interpolate_dim(x, 1 + k, pos, mode, chunk_voxels)
    x = x.permute(0, *(1 + layout.index(a) for a in want)).float().contiguous()
    if x.data_ptr() == src.data_ptr():  # the same grid: never hand out the caller's memory
        x = x.clone()
    if fortran:
        x = x.permute(0, 3, 2, 1)
    return x.numpy()


def _interpolate_dim(x: torch.Tensor, dim: int, pos: np.ndarray, mode: str, chunk_voxels: int) -> torch.Tensor:
    """1D interpolation of ``x`` along ``dim`` at source coordinates ``pos`` (border padding)."""
    n_src = x.shape[dim]
    pos = np.clip(pos, 0, n_src - 1)
    if len(pos) == n_src and np.abs(pos - np.arange(n_src)).max() < 1e-6:
        return x  # the same positions: nothing to do
    shape = list(x.shape)
    shape[dim] = len(pos)
    out = torch.empty(shape, dtype=torch.float32)
    if mode == "nearest":
        i0 = torch.from_numpy(np.round(pos).astype(np.int64))  # half to even, as grid_sample
        i1, w = None, None
    else:
        lo = np.floor(pos)
        i0 = torch.from_numpy(lo.astype(np.int64))
        i1 = torch.from_numpy(np.minimum(lo + 1, n_src - 1).astype(np.int64))
        w = torch.from_numpy((pos - lo).astype(np.float32)).view(*[-1 if d == dim else 1 for d in range(x.dim())])
    cdim = 1 if dim != 1 else 2  # chunks along another axis: out.narrow(1, ...) is contiguous for C = 1
    per_slice = max(1, int(np.prod(shape)) // shape[cdim])
    step = max(1, chunk_voxels // per_slice)
    for s in range(0, shape[cdim], step):
        n = min(step, shape[cdim] - s)
        src, dst = x.narrow(cdim, s, n), out.narrow(cdim, s, n)
        a = _take(src, dim, i0)
        if i1 is None:
            dst.copy_(a)
            continue
        a, b = a.float(), _take(src, dim, i1).float()
        if dst.is_contiguous():
            torch.lerp(a, b, w, out=dst)
        else:
            dst.copy_(a.lerp_(b, w))
    return out


def _take(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, index)``, on a 3D view when ``x`` is contiguous: torch's gather along
    the last axis of a 4D tensor is several times slower than along that of a 2D or 3D one."""
    if not x.is_contiguous():
        return x.index_select(dim, index)
    before, after = int(np.prod(x.shape[:dim])), int(np.prod(x.shape[dim + 1:]))
    shape = list(x.shape)
    shape[dim] = len(index)
    if after == 1:
        return x.view(before, x.shape[dim]).index_select(1, index).view(shape)
    return x.view(before, x.shape[dim], after).index_select(1, index).view(shape)


@dataclass
class DomainPreprocessor:
    """Reads one domain's volumes into the training frame.

    Args:
        spacing_mm: target voxel size (mm) along D, H, W.
        scaling_kind: ``"window"`` (CT, HU) or ``"percentile"`` (MR), see :mod:`medgan.data.intensity`.
        window: HU window for ``"window"``.
        percentiles: percentiles (in %) for ``"percentile"``.
        label_mapper: raw ids -> shared classes; ``None`` when the domain has no labels.
        knots: interior ``(HU, unit)`` pairs of a piecewise-linear ``"window"``.
    """

    spacing_mm: Sequence[float]
    scaling_kind: ScalingKind
    window: tuple[float, float] = (-1024.0, 2000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    label_mapper: LabelMapper | None = None
    knots: tuple[tuple[float, float], ...] = ()

    def scaling_for(self, volume: Volume) -> IntensityScaling:
        """This volume's intensity scaling (fixed window, or its own percentiles)."""
        return fit_scaling(volume.array, self.scaling_kind, self.window, self.percentiles, self.knots)

    @property
    def window_scaling(self) -> IntensityScaling:
        """The fixed HU scaling of a ``"window"`` domain (window and knots)."""
        return IntensityScaling(*self.window, self.knots)

    def image(self, volume: Volume) -> tuple[MetaTensor, IntensityScaling]:
        """Volume -> ``(1, D, H, W)`` in [-1, 1] on the canonical grid, and its scaling."""
        scaling = self.scaling_for(volume)
        img = to_canonical(volume, self.spacing_mm, "bilinear")
        return scaling.forward(img), scaling

    def body_mask(self, image: torch.Tensor) -> np.ndarray:
        """Body mask ``(D, H, W)`` bool of a model input ``(1, D, H, W)`` in [-1, 1]: above -500 HU
        for a CT domain (``window``), the Otsu rule otherwise (:mod:`medgan.data.masks`)."""
        from medgan.data.masks import body_mask, mr_body_mask

        x = image[0].detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)[0]
        if self.scaling_kind == "window":
            return body_mask(self.window_scaling.inverse(x))
        return mr_body_mask(x)

    def statistics(self, image: torch.Tensor, grid: Grid, body: np.ndarray, label: torch.Tensor | None = None) -> dict:
        """:func:`medgan.qa.scan_statistics` of a model input ``image (1, D, H, W)`` with its
        ``body`` mask, of a scan on ``grid``; for a CT domain with the HU histograms, per class
        of ``label (1, D, H, W)`` when given."""
        from medgan.qa import scan_statistics

        x = image[0].detach().cpu().numpy()
        ct = self.scaling_kind == "window"
        classes = self.label_mapper.classes if self.label_mapper is not None and label is not None else ()
        return scan_statistics(
            x, body, self.spacing_mm, grid.affine, grid.shape,
            hu=self.window_scaling.inverse(x) if ct else None, window=tuple(self.window) if ct else None,
            labels=label[0].detach().cpu().numpy().round().astype(np.int64) if classes else None, classes=classes)

    def training_volume(self, entry: dict, patch_size: Sequence[int], exclude_inferior: float = 0.0,
                        with_stats: bool = False) -> tuple[dict, IntensityScaling]:
        """A datalist entry -> dict with ``image (1, D, H, W)``, ``label (1, D, H, W)`` class
        indices (zeros when the volume is unlabelled; :data:`medgan.keys.UNLABELLED` outside a label
        map that covers a block of the scan, :func:`medgan.io.readers.place_label_map`), ``has_label``,
        foreground/background indices (labelled voxels only), padded
        to at least ``patch_size`` (image with -1, label with 0), and with ``with_stats``
        ``stats`` (:meth:`statistics` of the volume as trained on, for the checkpoint's
        out-of-distribution checks: a body mask per volume, so only when they are stored).
        ``exclude_inferior`` drops that fraction of axial slices from the inferior end (a
        held-out slab) before padding."""
        vol = read_volume(entry[Keys.IMAGE.value])
        image, scaling = self.image(vol)
        # without a label mapping (no classes configured) labels are not used: unsupervised CycleGAN
        label_path = entry.get(Keys.LABEL.value) if self.label_mapper is not None else None
        if label_path:
            lab = read_label_map(label_path)
            lab.array = self.label_mapper(lab.array, lab.path)
            # on the scan's grid: the whole of it, or a block (a labelled slab of a longer CT), the rest
            # UNLABELLED, which the segmentation losses ignore; the image keeps its whole field of view
            lab.array, lab.affine = place_label_map(lab, vol, UNLABELLED).astype(np.float32), vol.affine
            if (lab.array == UNLABELLED).any():
                known = np.argwhere(lab.array != UNLABELLED)
                logger.warning("%s: label map %s covers voxels %s..%s of the scan, placed by the two files' affines; its other "
                               "%.0f %% of voxels are unlabelled: the segmentation losses ignore them (they teach no background "
                               "there)", vol.path, lab.path, known.min(0).tolist(), known.max(0).tolist(),
                               100.0 * float(np.mean(lab.array == UNLABELLED)))
            label = to_canonical(lab, self.spacing_mm, "nearest")
        else:
            label = torch.zeros_like(image)
        if exclude_inferior > 0:
            k = held_out_slices(image.shape[-1], exclude_inferior)
            image, label = image[..., k:], label[..., k:]
        stats = self.statistics(image, vol.grid, self.body_mask(image), label if label_path else None) if with_stats else None
        image = SpatialPad(spatial_size=patch_size, value=-1.0)(image)
        label = SpatialPad(spatial_size=patch_size, value=0.0)(label)
        item = {
            Keys.IMAGE.value: image.as_tensor().float(),
            Keys.LABEL.value: label.as_tensor().round().long(),
            Keys.HAS_LABEL.value: bool(label_path),
            **({"stats": stats} if stats is not None else {}),
        }
        if label_path:
            # crops centre on labelled voxels, foreground (> 0) or known background (== 0), never on
            # UNLABELLED ones (FgBgToIndicesd would count those as foreground: it takes any nonzero)
            lab = item[Keys.LABEL.value]
            item[Keys.FG_INDICES.value], item[Keys.BG_INDICES.value] = map_binary_to_indices(
                lab > 0, image=(lab != UNLABELLED), image_threshold=0.5)
        return item, scaling


def held_out_slices(n_slices: int, fraction: float) -> int:
    """Number of inferior axial slices in a held-out slab of ``fraction`` (at least 1 when > 0)."""
    return max(1, int(round(n_slices * fraction))) if fraction > 0 else 0


class PatchDataset(torch.utils.data.Dataset):
    """Item ``i`` is a patch drawn deterministically from ``(seed, i)``: a random volume, then a
    crop centred on labelled anatomy with probability ``pos / (pos + neg)`` (labelled volumes) or
    anywhere (unlabelled ones). Stateless, so a resumed run draws exactly the patches an
    uninterrupted run would.

    With ``spatial`` (:class:`medgan.data.augment.SpatialAugment`) the crop is that many times
    larger (up to the volume's size) and is rotated and scaled onto the patch.

    Returns dicts with ``image (1, *patch_size)`` float32 in [-1, 1], ``label (1, *patch_size)``
    int64 class indices, ``has_label`` bool.
    """

    def __init__(
        self, volumes: list[dict], patch_size: Sequence[int], seed: int, length: int, pos: float = 2.0, neg: float = 1.0,
        spatial=None,  # noqa: ANN001 - medgan.data.augment.SpatialAugment
    ) -> None:
        if not volumes:
            raise ValueError("no training volumes")
        self.volumes, self.seed, self.length, self.spatial = volumes, int(seed), int(length), spatial
        self.labelled = [v for v in volumes if v[Keys.HAS_LABEL.value] and len(v[Keys.FG_INDICES.value]) > 0]
        keys = [Keys.IMAGE.value, Keys.LABEL.value]
        size = list(spatial.crop_size if spatial is not None else patch_size)
        self.labelled_crop = RandCropByPosNegLabeld(
            keys=keys, label_key=Keys.LABEL.value, spatial_size=size, pos=pos, neg=neg,
            fg_indices_key=Keys.FG_INDICES.value, bg_indices_key=Keys.BG_INDICES.value, allow_smaller=spatial is not None,
        )
        self.random_crop = RandSpatialCropd(keys=keys, roi_size=size, random_size=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.item(i)

    def item(self, i: int, labelled_only: bool = False) -> dict:
        """Patch ``i``; with ``labelled_only`` drawn from the labelled volumes alone (all of them
        when none is labelled), for a stage that trains only segmenters."""
        rng = np.random.default_rng([self.seed, int(i)])
        pool = (self.labelled or self.volumes) if labelled_only else self.volumes
        vol = pool[int(rng.integers(len(pool)))]
        labelled = vol[Keys.HAS_LABEL.value] and len(vol[Keys.FG_INDICES.value]) > 0
        crop = self.labelled_crop if labelled else self.random_crop
        crop.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = crop(vol)  # with spatial: the larger crop (clipped to the volume), then onto the patch
        out = out[0] if isinstance(out, list) else out
        if self.spatial is not None:
            out = self.spatial({Keys.IMAGE.value: _plain(out[Keys.IMAGE.value]), Keys.LABEL.value: _plain(out[Keys.LABEL.value])},
                               seed=int(rng.integers(2**31 - 1)))
        # plain tensors: MetaTensors would carry their metadata into batches, pools and checkpoints
        return {
            Keys.IMAGE.value: _plain(out[Keys.IMAGE.value]).float().contiguous(),
            Keys.LABEL.value: _plain(out[Keys.LABEL.value]).long().contiguous(),
            Keys.HAS_LABEL.value: vol[Keys.HAS_LABEL.value],
        }


def _plain(x) -> torch.Tensor:  # noqa: ANN001
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
