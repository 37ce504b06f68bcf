import json

import pytest

from medgan.data.datalist import datalist_from_folder, datalist_from_msd
from tests.conftest import PHANTOM


def test_folder_pairs_images_with_labels():
    entries = datalist_from_folder(PHANTOM / "ct")
    assert [e["image"].split("/")[-1] for e in entries] == ["phantom-ct-01.nii.gz", "phantom-ct-02.nii.gz"]
    assert entries[0]["label"].endswith("phantom-ct-01_labels.nii.gz")
    assert entries[1]["label"] is None


def test_msd_dataset_json_with_include(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    table = {"training": [
        {"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"},
        {"image": "./imagesTr/amos_0507.nii.gz", "label": "./labelsTr/amos_0507.nii.gz"},
    ], "test": ["./imagesTs/amos_0002.nii.gz"]}
    (tmp_path / "dataset.json").write_text(json.dumps(table))
    mr = datalist_from_msd(tmp_path / "dataset.json", include="*amos_05*")
    assert len(mr) == 1 and mr[0]["image"].endswith("amos_0507.nii.gz") and mr[0]["label"].endswith("labelsTr/amos_0507.nii.gz")
    assert datalist_from_msd(tmp_path / "dataset.json", section="test")[0]["label"] is None
    with pytest.raises(ValueError, match="no section"):
        datalist_from_msd(tmp_path / "dataset.json", section="validation")


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        datalist_from_folder(tmp_path)
