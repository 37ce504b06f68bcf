import numpy as np
import pytest

from medgan.data.labels import LabelMapper
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
