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


def _monai_canonical(vol: Volume, spacing, mode):
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    img = MetaTensor(torch.from_numpy(vol.array)[None], affine=torch.as_tensor(vol.affine))
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    return Spacing(pixdim=spacing, mode=mode, padding_mode="border")(img)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "ILA", "oblique"])
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (3.0, 1.3, 2.7)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_to_canonical_matches_monai_orientation_and_spacing(codes, spacing, mode):
    """The axis-by-axis interpolation gives MONAI's grid and values (nearest: up to exact ties)."""
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(21, 17, 13)).astype(np.float32)
    if mode == "nearest":
        arr = np.round(3 * arr)
    aff = oblique_affine(spacing=(1.5, 2.0, 2.5)) if codes == "oblique" else axcodes_affine(codes, spacing=(1.5, 2.0, 2.5))
    vol = Volume(arr, aff, "x")
    ours, ref = to_canonical(vol, spacing, mode), _monai_canonical(vol, spacing, mode)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine.numpy(), ref.affine.numpy(), atol=1e-9)
    if mode == "bilinear":
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)
        return
    # nearest: a destination voxel exactly halfway between two source voxels may round either way
    vox = np.linalg.solve(vol.affine, ours.affine.numpy())
    tie = np.zeros(ours.shape[1:], bool)
    for a in range(3):
        c = int(np.abs(vox[:3, a]).argmax())
        pos = vox[c, a] * np.arange(ours.shape[1 + a]) + vox[c, 3]
        tie |= np.isclose(pos % 1, 0.5).reshape([-1 if d == a else 1 for d in range(3)])
    assert not ((ours.numpy()[0] != ref.numpy()[0]) & ~tie).any()


def test_resampling_is_the_same_in_any_chunk_size_and_layout():
    import torch

    from medgan.data.transforms import resample_axis_aligned

    data = torch.from_numpy(_smooth((21, 17, 13)))[None]
    vox = np.array([[0.0, -0.6, 0.0, 16.0], [0.45, 0.0, 0.0, 0.3], [0.0, 0.0, 1.7, -0.2], [0, 0, 0, 1]])
    ref = resample_axis_aligned(data, vox, (40, 30, 9), "bilinear", chunk_voxels=1 << 30)
    small = resample_axis_aligned(data, vox, (40, 30, 9), "bilinear", chunk_voxels=7)
    fortran = resample_axis_aligned(data, vox, (40, 30, 9), "bilinear", fortran=True, chunk_voxels=50)
    np.testing.assert_array_equal(small, ref)
    np.testing.assert_allclose(fortran, ref, atol=1e-5)
    assert fortran[0].flags["F_CONTIGUOUS"] and ref[0].flags["C_CONTIGUOUS"]
    # the same grid gives a copy, never the caller's memory
    same = resample_axis_aligned(data, np.eye(4), (21, 17, 13), "bilinear")
    np.testing.assert_array_equal(same, data.numpy())
    assert not np.shares_memory(same, data.numpy())


def test_onto_grid_matches_world_positions_and_pads_labels_with_background():
    from medgan.data.transforms import onto_grid
    from medgan.io import Volume, VolumeError

    lab = np.zeros((10, 8, 6), np.float32)
    lab[2:5, 1:4, 0:3] = 3
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = Volume(lab, aff, "lab.nii.gz")
    # the same voxels, first axis flipped: identical world positions
    flip = aff @ np.array([[-1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    np.testing.assert_array_equal(onto_grid(vol, flip, lab.shape, "nearest"), lab[::-1])
    np.testing.assert_array_equal(onto_grid(vol, flip, lab.shape, "exact"), lab[::-1])
    # a larger grid: background beyond the label map, not its border values
    big = aff.copy()
    big[:3, 3] = [-4.0, 0, 0]
    out = onto_grid(vol, big, (14, 8, 6), "nearest")
    np.testing.assert_array_equal(out[2:12], lab)
    assert not out[:2].any() and not out[12:].any()
    with pytest.raises(VolumeError, match="voxel centres"):
        onto_grid(vol, big, (14, 8, 6), "exact")  # reaches outside the reference


def test_segmenter_only_draws_come_from_labelled_volumes():
    from medgan.data.labels import LabelMapper

    mapper = LabelMapper.from_classmap(["liver", "aorta"], PHANTOM / "classmap.json", "phantom")
    pre = DomainPreprocessor((4.0, 4.0, 4.0), "window", label_mapper=mapper)
    image = str(PHANTOM / "ct/phantom-ct-01.nii.gz")
    labelled, _ = pre.training_volume({"image": image, "label": str(PHANTOM / "ct/phantom-ct-01_labels.nii.gz")}, (16, 16, 8))
    unlabelled, _ = pre.training_volume({"image": image, "label": None}, (16, 16, 8))
    ds = PatchDataset([unlabelled, labelled, unlabelled], (16, 16, 8), seed=5, length=40)
    assert not all(ds[i]["has_label"] for i in range(20))  # every volume is drawn
    assert all(ds.item(i, labelled_only=True)["has_label"] for i in range(20))
    assert (ds.item(3, labelled_only=True)["image"] == ds.item(3, labelled_only=True)["image"]).all()  # deterministic
    alone = PatchDataset([unlabelled], (16, 16, 8), seed=5, length=4)  # no labelled volume: every volume still drawn
    assert not alone.item(0, labelled_only=True)["has_label"]


def test_a_slab_label_map_trains_on_the_whole_scan_with_the_rest_unlabelled(tmp_path, caplog):
    """A label map of a slab of the scan (the shared TotalSegmentator CT is one): the image keeps
    its whole field of view, the voxels outside the slab are UNLABELLED (the losses ignore them),
    and labelled crops centre on the slab's voxels only."""
    import nibabel as nib

    from medgan.data.labels import LabelMapper
    from medgan.keys import UNLABELLED
    from tests.conftest import write_nifti_file

    full = nib.load(PHANTOM / "ct/phantom-ct-01_labels.nii.gz")
    lab = np.asarray(full.dataobj)
    at = full.affine.copy()
    at[:3, 3] = full.affine[:3, :3] @ [0, 0, 10] + full.affine[:3, 3]  # slices 10..21 of the 32
    slab = write_nifti_file(tmp_path / "slab_labels.nii.gz", lab[:, :, 10:22].astype(np.uint8), at)
    mapper = LabelMapper.from_classmap(["liver", "kidney_right", "kidney_left"], PHANTOM / "classmap.json", "phantom")
    pre = DomainPreprocessor((4.0, 4.0, 4.0), "window", label_mapper=mapper)
    image = str(PHANTOM / "ct/phantom-ct-01.nii.gz")
    whole, _ = pre.training_volume({"image": image, "label": str(PHANTOM / "ct/phantom-ct-01_labels.nii.gz")}, (16, 16, 8))
    with caplog.at_level("WARNING"):
        part, _ = pre.training_volume({"image": image, "label": str(slab)}, (16, 16, 8))
    # the user is told, with where the label map went (a wrong header would show here)
    assert "slab_labels.nii.gz" in caplog.text and "[0, 0, 10]..[79, 63, 21]" in caplog.text and "teach no background" in caplog.text
    assert part["image"].shape == (1, 80, 64, 32) and (part["image"] == whole["image"]).all()
    y, known = part["label"][0], part["label"][0] != UNLABELLED
    assert known[:, :, 10:22].all() and not known[:, :, :10].any() and not known[:, :, 22:].any()
    assert (y[known] == whole["label"][0][known]).all() and (y[known] > 0).any()
    flat = y.reshape(-1)
    assert (flat[part["label_fg_indices"]] > 0).all()
    assert (flat[part["label_bg_indices"]] == 0).all()  # known background only
    assert len(part["label_bg_indices"]) == int((y == 0).sum())
    ds = PatchDataset([part], (16, 16, 8), seed=3, length=30, pos=1.0, neg=1.0)
    for i in range(30):  # every crop (centred on a labelled voxel) holds labelled voxels
        assert (ds.item(i, labelled_only=True)["label"] != UNLABELLED).any()
