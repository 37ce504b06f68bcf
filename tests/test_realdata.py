"""End-to-end smoke run on ../shared/data with tiny networks: train, translate, evaluate, and
every head volume (RAS, LPS, LAS, PIR, NRRD, oblique DICOM) comes out on its own grid."""

import nibabel as nib
import numpy as np
import pytest

from medgan.config import load_config
from medgan.io import read_volume
from medgan.pipelines.cyclegan.config import CycleGANConfig
from medgan.pipelines.cyclegan.evaluate import evaluate
from medgan.pipelines.cyclegan.trainer import train
from medgan.pipelines.cyclegan.translate import translate
from tests.conftest import DATA_DIR, ROOT, TINY, requires_data

pytestmark = [requires_data, pytest.mark.realdata]


@pytest.fixture(scope="module")
def abdomen_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abdomen")
    cfg = load_config(CycleGANConfig, ROOT / "configs/abdomen.yaml", [
        *TINY, "optim.n_iters=2", "loss.shape_warmup_iters=0", f"train.output_dir={tmp}",
        f"domain_a.labels.classmap={DATA_DIR / 'classmaps/totalsegmentator.json'}",
        f"domain_b.labels.classmap={DATA_DIR / 'classmaps/totalsegmentator.json'}",
        f"domain_a.data.folder={DATA_DIR / 'abdomen/ct'}", f"domain_b.data.folder={DATA_DIR / 'abdomen/mr'}",
    ])
    return train(cfg, progress=False)


def test_abdomen_translate_and_evaluate(tmp_path, abdomen_checkpoint):
    mr, ct = DATA_DIR / "abdomen/mr/ts-mr-01.nii.gz", DATA_DIR / "abdomen/ct/ts-ct-01-full.nii.gz"
    assert translate(abdomen_checkpoint, [mr], tmp_path, "mr2ct", segment=True).ok
    assert translate(abdomen_checkpoint, [ct], tmp_path, "ct2mr").ok
    for src, out in ((mr, "ts-mr-01_mr2ct.nii.gz"), (ct, "ts-ct-01-full_ct2mr.nii.gz")):
        a, b = nib.load(str(src)), nib.load(str(tmp_path / out))
        assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-5)
    report = evaluate(abdomen_checkpoint, tmp_path / "ts-mr-01_mr2ct.nii.gz", "mr2ct",
                      source_labels=DATA_DIR / "abdomen/mr/ts-mr-01_labels.nii.gz",
                      reference=DATA_DIR / "abdomen/ct/ts-ct-01.nii.gz",
                      reference_labels=DATA_DIR / "abdomen/ct/ts-ct-01_labels.nii.gz")
    assert {"liver", "spleen", "vertebrae", "aorta"} <= set(report["intensity"])
    assert 30 < report["intensity"]["liver"]["reference_mean"] < 130  # real liver HU (soft tissue), from the CT's own labels


HEAD = ["head/mr/mni2009-t1-template.nii.gz", "head/mr/adi-t1-memprage.nii.gz", "head/mr/clinical-flair-template-2mm.nii.gz",
        "head/mr/pyradiomics-brain1.nrrd", "head/dicom/adi-t1-memprage", "thorax/ct/ts-ct-02.nii.gz"]


def test_head_volumes_keep_their_grid(tmp_path, abdomen_checkpoint):
    rep = translate(abdomen_checkpoint, [DATA_DIR / h for h in HEAD], tmp_path, "mr2ct")
    assert rep.ok, rep.failed
    for h in HEAD:
        src = read_volume(DATA_DIR / h)
        out = nib.load(rep.written[str(DATA_DIR / h)][0])  # the NIfTI and DICOM MEMPRAGE share a name: hashed stems
        assert out.shape == src.array.shape, h
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-4, err_msg=h)
