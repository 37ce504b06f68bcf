"""Geometry round trip: to the RAS training frame and back onto the input's exact grid."""

import numpy as np
import pytest

from medgan.data.transforms import DomainPreprocessor, PatchDataset, to_canonical, to_input_grid
from medgan.io import Volume
from tests.conftest import PHANTOM, axcodes_affine, oblique_affine


def _smooth(shape=(20, 18, 16)) -> np.ndarray:
    i, j, k = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    return (100 * i + 50 * j**2 + 30 * np.sin(3 * k)).astype(np.float32)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "ILA"])
def test_round_trip_is_exact_for_axis_aligned_inputs(codes):
    vol = Volume(_smooth(), axcodes_affine(codes, spacing=(2.0, 2.0, 2.0)), "x")
    can = to_canonical(vol, (2.0, 2.0, 2.0))
    back = to_input_grid(can, can.affine, vol.affine, vol.array.shape, "bilinear")[0]
    assert back.shape == vol.array.shape
    np.testing.assert_allclose(back, vol.array, atol=1e-3)


def test_canonical_frame_is_ras():
    import nibabel as nib

    can = to_canonical(Volume(_smooth(), axcodes_affine("PIR"), "x"), (2.0, 2.0, 2.0))
    assert nib.aff2axcodes(can.affine.numpy()) == ("R", "A", "S")


def test_round_trip_oblique_and_resampled_stays_close():
    vol = Volume(_smooth((24, 22, 20)), oblique_affine(spacing=(2.0, 2.0, 2.0)), "x")
    can = to_canonical(vol, (3.0, 3.0, 3.0))
    back = to_input_grid(can, can.affine, vol.affine, vol.array.shape, "bilinear")[0]
    assert back.shape == vol.array.shape
    inner = (slice(3, -3),) * 3  # borders are extrapolated
    assert np.abs(back[inner] - vol.array[inner]).mean() < 2.0  # of a 0..180 range


def test_labels_round_trip_with_nearest():
    lab = np.zeros((20, 18, 16), np.float32)
    lab[5:12, 4:9, 3:10] = 3
    vol = Volume(lab, axcodes_affine("LPS"), "lab")
    can = to_canonical(vol, (2.0, 2.0, 2.0), "nearest")
    back = to_input_grid(can, can.affine, vol.affine, lab.shape, "nearest")[0]
    np.testing.assert_array_equal(back, lab)


def test_patch_dataset_is_deterministic_and_biased_to_labels():
    from medgan.data.labels import LabelMapper

    mapper = LabelMapper.from_classmap(["liver", "aorta"], PHANTOM / "classmap.json", "phantom")
    pre = DomainPreprocessor((4.0, 4.0, 4.0), "window", label_mapper=mapper)
    item, _ = pre.training_volume({"image": str(PHANTOM / "ct/phantom-ct-01.nii.gz"),
                                   "label": str(PHANTOM / "ct/phantom-ct-01_labels.nii.gz")}, (16, 16, 8))
    ds = PatchDataset([item], (16, 16, 8), seed=3, length=40, pos=1.0, neg=0.0)
    a, b = ds[7], ds[7]
    assert a["image"].shape == (1, 16, 16, 8)
    assert (a["image"] == b["image"]).all()
    assert not (ds[8]["image"] == a["image"]).all()
    # pos=1, neg=0: every patch is centred on labelled anatomy
    assert all(ds[i]["label"][0, 8, 8, 4] > 0 for i in range(10))


@pytest.mark.parametrize("codes, spacing", [("LPS", (1.0, 1.5, 2.0)), ("PIR", (0.8, 1.2, 2.5)), ("RAS", (3.0, 3.0, 3.0))])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_separable_resampling_matches_monai_spatial_resample(codes, spacing, mode):
    """The axis-by-axis path of to_input_grid gives what MONAI's SpatialResample gives."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    vol = Volume(_smooth((21, 17, 13)), axcodes_affine(codes, spacing=spacing), "x")
    can = to_canonical(vol, (2.0, 2.0, 2.0))
    ours = to_input_grid(can, can.affine, vol.affine, vol.array.shape, mode)
    ref = SpatialResample(mode=mode, padding_mode="border")(
        MetaTensor(can.as_tensor(), affine=can.affine), dst_affine=torch.as_tensor(vol.affine), spatial_size=vol.array.shape)
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    assert ours.shape == ref.shape
    if mode == "bilinear":
        np.testing.assert_allclose(ours[inner], ref.numpy()[inner], atol=1e-3)
        return
    # nearest: positions exactly halfway between two voxels may round either way (floating point)
    vox = np.linalg.solve(np.asarray(can.affine), vol.affine)
    tie = np.zeros(vol.array.shape, bool)
    for a in range(3):
        c = int(np.abs(vox[:3, a]).argmax())
        pos = vox[c, a] * np.arange(vol.array.shape[a]) + vox[c, 3]
        is_tie = np.isclose(pos % 1, 0.5)
        tie |= is_tie.reshape([-1 if d == a else 1 for d in range(3)])
    differ = ours[0] != ref.numpy()[0]
    assert not (differ & ~tie).any()


@pytest.mark.parametrize("codes", ["LPS", "PIR"])
def test_fortran_ordered_arrays_give_the_same_canonical_volume(codes):
    """nibabel hands out Fortran-ordered arrays; to_canonical avoids copying them."""
    c = _smooth((21, 17, 13))
    aff = axcodes_affine(codes, spacing=(1.5, 2.0, 2.5))
    a = to_canonical(Volume(c, aff, "c"), (2.0, 2.0, 2.0))
    b = to_canonical(Volume(np.asfortranarray(c), aff, "f"), (2.0, 2.0, 2.0))
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy())
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
