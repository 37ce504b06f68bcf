import numpy as np
import pytest

from medgan.data.labels import LabelMapper, keep_largest_components
from tests.conftest import DATA_DIR, requires_data


def test_explicit_ids_remap_and_background():
    m = LabelMapper(["liver", "bone"], {"liver": [5], "bone": [26, 27]}, known_ids={5, 26, 27, 99})
    lab = np.array([0, 5, 26, 27, 99])
    np.testing.assert_array_equal(m(lab), [0, 1, 2, 2, 0])
    assert m.num_classes == 3


def test_unknown_ids_raise_with_file_name():
    m = LabelMapper(["liver"], {"liver": [5]}, known_ids={5})
    with pytest.raises(ValueError, match=r"lab\.nii\.gz.*\[7\]"):
        m(np.array([0, 5, 7]), "lab.nii.gz")


@requires_data
def test_totalsegmentator_classmap_ct_and_mr():
    cm = DATA_DIR / "classmaps/totalsegmentator.json"
    classes = ["liver", "vertebrae", "aorta"]
    ct = LabelMapper.from_classmap(classes, cm, "total", groups="mr_merged_from_ct")
    mr = LabelMapper.from_classmap(classes, cm, "total_mr")
    np.testing.assert_array_equal(ct(np.array([5, 26, 50, 52, 1])), [1, 2, 2, 3, 0])  # L5..C1 merged
    np.testing.assert_array_equal(mr(np.array([5, 19, 23, 20])), [1, 2, 3, 0])
    with pytest.raises(ValueError, match="livr.*did you mean"):
        LabelMapper.from_classmap(["livr"], cm, "total")
    with pytest.raises(ValueError, match="no label space"):
        LabelMapper.from_classmap(classes, cm, "nope")


def test_keep_largest_components_drops_the_smaller_parts_of_each_class_only():
    import torch
    from scipy import ndimage

    seg = np.zeros((12, 12, 8), np.uint8)
    seg[0:4, 0:4, 0:4] = 1  # the liver: 64 voxels ...
    seg[8:10, 8:10, 6:8] = 1  # ... and a stray 8-voxel island far away
    seg[6:8, 0:3, 0:2] = 2  # one spleen component, smaller than the liver's island: kept (classes are independent)
    seg[11, 11, 0] = 3  # a kidney of one voxel: its only component, kept
    out = keep_largest_components(seg, 3)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == seg.shape
    assert (out == 1).sum() == 64 and ndimage.label(out == 1)[1] == 1
    assert (out[8:10, 8:10, 6:8] == 0).all()  # the island became background, not another class
    assert ((out == 2) == (seg == 2)).all() and ((out == 3) == (seg == 3)).all()
    batch = torch.as_tensor(np.stack([seg, seg[::-1].copy()]))  # (B, D, H, W) tensors come back as tensors
    got = keep_largest_components(batch, 3)
    assert isinstance(got, torch.Tensor) and got.dtype == batch.dtype and torch.equal(got[0], torch.as_tensor(out))
    with pytest.raises(ValueError, match="got shape"):
        keep_largest_components(seg[0], 3)
