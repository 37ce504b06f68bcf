"""Synthetic CT as a DICOM CT series: in the MR's study and frame of reference, one slice on each
MR slice, read back onto the input's grid with HU within the rounding."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medgan.io import VolumeError, read_volume
from medgan.io.dicom_write import StudyIdentifiers, write_ct_series
from medgan.pipelines.cyclegan.translate import Translator, translate
from tests.conftest import axcodes_affine, oblique_affine, write_dicom_series, write_nifti_file

SHARED_SERIES = Path(os.environ.get("MEDGAN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data")) / \
    "head/dicom/adi-t1-memprage"


def _mr(shape=(24, 20, 10)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.gamma(2, 100, size=shape).astype(np.float32)


def _files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.iterdir())]


def _world(affine: np.ndarray, shape) -> np.ndarray:  # (N, 3) RAS centre of every voxel
    ijk = np.indices(shape).reshape(3, -1)
    return (affine[:3, :3] @ ijk + affine[:3, 3:4]).T


def _same_grid_values(expected: np.ndarray, exp_affine: np.ndarray, got: np.ndarray, got_affine: np.ndarray) -> np.ndarray:
    """``got`` reordered voxel by voxel onto ``expected``'s grid by world position (exact match
    required: each voxel centre of one grid must be a voxel centre of the other within 1e-3 mm)."""
    ijk = np.linalg.solve(got_affine, np.c_[_world(exp_affine, expected.shape), np.ones(expected.size)].T)[:3]
    idx = np.rint(ijk)
    assert np.abs(ijk - idx).max() < 1e-3 / min(np.linalg.norm(got_affine[:3, :3], axis=0))
    i, j, k = idx.astype(int)
    return got[i, j, k].reshape(expected.shape)


def test_sct_of_a_dicom_mr_joins_its_study_one_slice_on_each_mr_slice(tmp_path, tiny_checkpoint):
    # one slice missing (position 8 mm): the reader interpolates it; the sCT has no slice there
    z = [0.0, 2.0, 4.0, 6.0, 10.0, 12.0, 14.0, 16.0, 18.0]
    mr_files = write_dicom_series(tmp_path / "mr", _mr((24, 20, 9)), spacing=(1.5, 1.5, 2.0), slice_positions=z)
    rep = translate(tiny_checkpoint, [tmp_path / "mr"], tmp_path / "out", "mr2ct", output_format="dicom")
    assert rep.ok, rep.failed
    folder = tmp_path / "out/mr_mr2ct_dicom"
    sct = _files(folder)
    mr = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in mr_files)}
    assert len(sct) == len(mr_files)  # the interpolated grid slice is not written
    series = {str(d.SeriesInstanceUID) for d in sct}
    assert len(series) == 1 and series.isdisjoint({str(d.SeriesInstanceUID) for d in mr.values()})
    assert len({str(d.SOPInstanceUID) for d in sct}) == len(sct)
    first_mr = next(iter(mr.values()))
    for d in sct:
        assert d.Modality == "CT" and list(d.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and d.RescaleType == "HU"
        assert "sCT" in d.SeriesDescription and "medgan" in d.SeriesDescription
        for tag in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "PatientPosition",
                    "AccessionNumber"):
            assert d.data_element(tag).value == first_mr.data_element(tag).value, tag
        (ref,) = d.SourceImageSequence
        src = mr[str(ref.ReferencedSOPInstanceUID)]
        np.testing.assert_allclose(np.asarray(d.ImagePositionPatient, float), np.asarray(src.ImagePositionPatient, float),
                                   atol=1e-6)
        assert d.DerivationCodeSequence[0].CodeValue == "113085" and d.WindowWidth == 400
        assert d.pixel_array.dtype == np.int16 and not any(t.group % 2 for t in d.keys())  # no private tags
    # HU read back by pydicom = the translation rounded, slice by slice at the MR's positions
    vol = read_volume(tmp_path / "mr")
    expected = Translator(tiny_checkpoint, "cpu").translate_volume(vol, "mr2ct").image
    side = json.loads((tmp_path / "out/mr_mr2ct.json").read_text())
    assert side["dicom_output"]["grid_slices_not_written"]["slices"] == [4]
    kept = [k for k in range(vol.array.shape[2]) if k != 4]
    for d, k in zip(sorted(sct, key=lambda d: float(d.ImagePositionPatient[2])), kept):
        hu = d.pixel_array.T * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.abs(hu - expected[:, :, k]).max() <= 0.5 + 1e-3
    # a rerun finds it done; the manifest names the series folder with its checksum
    again = translate(tiny_checkpoint, [tmp_path / "mr"], tmp_path / "out", "mr2ct", output_format="dicom")
    assert again.skipped and not again.written


@pytest.mark.parametrize("affine", [axcodes_affine("LPS", (2, 2.5, 4)), axcodes_affine("LAS", (1.25, 1.25, 7.7)),
                                    oblique_affine((3, 2.5, 3.5))], ids=["LPS", "LAS", "oblique"])
def test_sct_of_a_nifti_needs_study_identifiers_and_reads_back_on_its_grid(tmp_path, tiny_checkpoint, affine):
    src = write_nifti_file(tmp_path / "in.nii.gz", _mr(), affine)
    with pytest.raises(VolumeError, match=r"in\.nii\.gz.*--patient-id and --study-uid"):
        translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", output_format="dicom")
    study = StudyIdentifiers("P-7", "1.2.826.0.1.3680043.8.498.1", patient_name="Doe^Jane",
                             frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2")
    rep = translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", output_format="dicom", study=study)
    assert rep.ok, rep.failed
    folder = tmp_path / "out/in_mr2ct_dicom"
    d0 = _files(folder)[0]
    assert d0.PatientID == "P-7" and d0.StudyInstanceUID == study.study_instance_uid
    assert d0.FrameOfReferenceUID == study.frame_of_reference_uid and d0.PatientName == "Doe^Jane"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    d = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = d, img.GetOrigin()
    back_affine = np.diag([-1.0, -1, 1, 1]) @ lps
    back = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)
    expected = Translator(tiny_checkpoint, "cpu").translate_volume(read_volume(src), "mr2ct").image
    got = _same_grid_values(expected, affine, back, back_affine)  # fails unless every voxel is on the input grid
    assert np.abs(got - expected).max() <= 0.5 + 1e-3


def test_write_ct_series_refuses_what_it_cannot_write_exactly(tmp_path):
    study = StudyIdentifiers("P", "1.2.3")
    hu = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(VolumeError, match="does not fit int16"):
        write_ct_series(tmp_path / "a", hu + 40000, np.eye(4), study=study)
    sheared = np.eye(4)
    sheared[0, 1] = 0.5
    with pytest.raises(VolumeError, match="not orthogonal"):
        write_ct_series(tmp_path / "b", hu, sheared, study=study)
    with pytest.raises(VolumeError, match="not a valid DICOM UID"):
        write_ct_series(tmp_path / "c", hu, np.eye(4), study=StudyIdentifiers("P", "1.2.x"))
    # an earlier series under the name is replaced only by a complete one; nothing partial is left
    write_ct_series(tmp_path / "d", hu, np.eye(4), study=study)
    with pytest.raises(VolumeError):
        write_ct_series(tmp_path / "d", hu + np.nan, np.eye(4), study=study)
    assert len(list((tmp_path / "d").iterdir())) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(tmp_path, tiny_checkpoint):
    write_dicom_series(tmp_path / "mr", _mr((24, 20, 4)), spacing=(1.5, 1.5, 2.0))
    rep = translate(tiny_checkpoint, [tmp_path / "mr"], tmp_path / "out", "mr2ct", output_format="dicom", segment=True)
    assert rep.ok, rep.failed
    for f in [*sorted((tmp_path / "out/mr_mr2ct_dicom").iterdir()), tmp_path / "out/mr_mr2ct_seg.dcm"]:
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_SERIES.is_dir(), reason=f"the shared oblique DICOM series is not at {SHARED_SERIES}")
def test_shared_oblique_series_reads_back_on_the_input_grid(tmp_path, tiny_checkpoint):
    rep = translate(tiny_checkpoint, [SHARED_SERIES], tmp_path / "out", "mr2ct", output_format="dicom")
    assert rep.ok, rep.failed
    folder = next((tmp_path / "out").glob("*_dicom"))
    vol = read_volume(SHARED_SERIES)
    src = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f, stop_before_pixels=True) for f in SHARED_SERIES.iterdir())}
    sct = _files(folder)
    assert len(sct) == len(src)
    for d in sct:
        ref = src[str(d.SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert np.abs(np.asarray(d.ImagePositionPatient, float) - np.asarray(ref.ImagePositionPatient, float)).max() < 1e-3
        assert np.allclose(np.asarray(d.ImageOrientationPatient, float), np.asarray(ref.ImageOrientationPatient, float),
                           atol=1e-5)
        assert np.allclose(np.asarray(d.PixelSpacing, float), np.asarray(ref.PixelSpacing, float), atol=1e-6)
    back = read_volume(folder)  # medgan's reader: the same grid as the MR's
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-3)
    assert back.array.shape == vol.array.shape


def test_segment_gives_a_dicom_seg_referencing_the_sct_series(tmp_path, tiny_checkpoint):
    import highdicom as hd

    affine = axcodes_affine("LPS", (2, 2.5, 4))
    src = write_nifti_file(tmp_path / "in.nii.gz", _mr(), affine)
    study = StudyIdentifiers("P-7", "1.2.826.0.1.3680043.8.498.1")
    rep = translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", output_format="dicom", study=study, segment=True)
    assert rep.ok, rep.failed
    seg = hd.seg.segread(tmp_path / "out/in_mr2ct_seg.dcm")
    cts = _files(tmp_path / "out/in_mr2ct_dicom")
    tr = Translator(tiny_checkpoint, "cpu")
    labels = tr.translate_volume(read_volume(src), "mr2ct", segment=True).labels
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == study.study_instance_uid
    assert seg.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == {str(d.SOPInstanceUID) for d in cts}
    assert [s.SegmentLabel for s in seg.SegmentSequence] == tr.classes
    liver = seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (liver.CodeValue, liver.CodingSchemeDesignator) == ("10200004", "SCT")
    # each class's frames are that class's voxels of the labels, at the CT slice they reference
    for c in range(1, len(tr.classes) + 1):
        for d in cts:
            k = int(round(np.linalg.solve(affine, [*np.diag([-1, -1, 1]) @ np.asarray(d.ImagePositionPatient, float), 1])[2]))
            mask = seg.get_pixels_by_source_instance([str(d.SOPInstanceUID)], segment_numbers=[c],
                                                     ignore_spatial_locations=True)[0, :, :, 0]
            np.testing.assert_array_equal(mask.T.astype(bool), labels[:, :, k] == c)
