"""Translation: outputs on the input's exact grid, in HU; bad files reported, batch goes on."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipelines.cyclegan.evaluate import evaluate
from pipelines.cyclegan.translate import Translator, translate
from tests.conftest import PHANTOM, axcodes_affine, oblique_affine, write_nifti_file


def _mr_like(shape=(30, 26, 18)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.gamma(2, 100, size=shape)).astype(np.float32)


@pytest.mark.parametrize("affine", [axcodes_affine("RAS", (3, 3, 3)), axcodes_affine("LPS", (2, 2.5, 4)),
                                    axcodes_affine("PIR", (1.5, 1.5, 1.5)), oblique_affine((3, 3, 3))],
                         ids=["RAS", "LPS", "PIR", "oblique"])
def test_output_has_the_input_grid(tmp_path, tiny_checkpoint, affine):
    src = write_nifti_file(tmp_path / "in.nii.gz", _mr_like(), affine)
    rep = translate(tiny_checkpoint, [src], tmp_path / "out", "mr2ct", segment=True)
    assert rep.ok, rep.failed
    for f in ("in_mr2ct.nii.gz", "in_mr2ct_seg.nii.gz"):
        out = nib.load(str(tmp_path / "out" / f))
        assert out.shape == (30, 26, 18)
        np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    sct = np.asarray(nib.load(str(tmp_path / "out/in_mr2ct.nii.gz")).dataobj)
    assert -1024 <= sct.min() and sct.max() <= 2000  # HU inside the configured window
    side = json.loads((tmp_path / "out/in_mr2ct.json").read_text())
    assert side["units"] == "HU" and side["direction"] == "MR->CT"


def test_bad_files_are_reported_and_the_batch_goes_on(tmp_path, tiny_checkpoint):
    good = write_nifti_file(tmp_path / "good.nii.gz", _mr_like(), np.eye(4) * 3 + np.diag([0, 0, 0, -2]))
    nan = write_nifti_file(tmp_path / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32), np.eye(4))
    flat = write_nifti_file(tmp_path / "flat.nii.gz", np.zeros((8, 8, 8), np.float32), np.eye(4))
    seen = []
    rep = translate(tiny_checkpoint, [nan, tmp_path / "missing.nii.gz", good, flat], tmp_path / "out", "mr2ct",
                    on_result=lambda job, w, e: seen.append(job.source.name))
    assert sorted(seen) == ["flat.nii.gz", "good.nii.gz", "missing.nii.gz", "nan.nii.gz"]  # every scan reported
    assert list(rep.written) == [str(good)]
    assert set(rep.failed) == {str(nan), str(tmp_path / "missing.nii.gz"), str(flat)}
    assert "NaN" in rep.failed[str(nan)] and "no such file" in rep.failed[str(tmp_path / "missing.nii.gz")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_mr2ct.json", "good_mr2ct.nii.gz", "manifest.jsonl"]


def test_translate_tensor_and_direction_names(tiny_checkpoint):
    tr = Translator(tiny_checkpoint, device="cpu")
    y = tr.translate_tensor(torch.rand(1, 1, 40, 35, 20) * 2 - 1, "ct2mr")
    assert y.shape == (1, 1, 40, 35, 20) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="mr2ct or ct2mr|ct2mr or mr2ct"):
        tr.parse_direction("ct2pet")


def test_evaluate_reports_all_parts(tmp_path, tiny_checkpoint):
    rep = translate(tiny_checkpoint, [PHANTOM / "mr/phantom-mr-01.nii.gz"], tmp_path, "mr2ct")
    assert rep.ok
    report = evaluate(tiny_checkpoint, tmp_path / "phantom-mr-01_mr2ct.nii.gz", "mr2ct",
                      source_labels=PHANTOM / "mr/phantom-mr-01_labels.nii.gz",
                      reference=PHANTOM / "ct/phantom-ct-01.nii.gz",
                      reference_labels=PHANTOM / "ct/phantom-ct-01_labels.nii.gz",
                      paired_reference=PHANTOM / "paired/phantom-mr-01_ct.nii.gz", output_dir=tmp_path / "ev")
    assert set(report["dice"]) == set(Translator(tiny_checkpoint).classes)
    assert all(0 <= v <= 1 for v in report["dice"].values() if v == v)
    assert report["intensity"]["liver"]["reference_mean"] == pytest.approx(100, abs=15)  # phantom liver HU
    assert report["paired"]["mae_hu"] > 0 and -1 <= report["paired"]["ssim"] <= 1
    assert (tmp_path / "ev/evaluation.csv").read_text().startswith("metric,class,value")
