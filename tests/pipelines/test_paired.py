"""Paired translation (issue 18): data layouts and grid checks, masked L1, training lowers the
L1, perception loss, inference on the input's grid, Cormack -> HU."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from medgan.io import VolumeError, read_volume
from medgan.losses import SegmentationPerceptionLoss, masked_l1
from tests.conftest import PHANTOM, ROOT, axcodes_affine, oblique_affine, write_nifti_file

TINY_PAIRED = ["network.unet_features=[4,4,8,8,16,4]", "network.ndf=4", "network.d_layers=2",
               "train.patch_size=[32,32,16]", "train.png_every=1000", "train.checkpoint_every=1000",
               "train.log_every=1000", "inference.roi_size=[32,32,16]", "inference.sw_batch_size=4"]


def paired_config(tmp, *overrides):
    from medgan.config import load_config
    from medgan.pipelines.paired.config import PairedConfig

    os.chdir(ROOT)
    return load_config(PairedConfig, ROOT / "configs/paired_phantom.yaml",
                       [*TINY_PAIRED, f"train.output_dir={tmp}", "optim.n_iters=2", *overrides])


@pytest.fixture(scope="module")
def paired_checkpoint(tmp_path_factory):
    from medgan.pipelines.paired.trainer import train

    return train(paired_config(tmp_path_factory.mktemp("paired")), progress=False)


def test_masked_l1_ignores_voxels_outside_the_mask():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, 4)
    mask[:, :, :2] = 1
    base = masked_l1(pred, target, mask)
    changed = pred.clone()
    changed[:, :, 2:] += 100.0  # outside the mask
    assert torch.allclose(masked_l1(changed, target, mask), base)
    changed[:, :, 0] += 1.0  # inside
    assert not torch.allclose(masked_l1(changed, target, mask), base)
    assert torch.isclose(base, (pred - target).abs()[:, :, :2].mean())
    assert float(masked_l1(pred, target, torch.zeros_like(mask))) == 0.0


def test_perception_loss_is_zero_on_equal_inputs_and_keeps_the_encoder_frozen():
    from medgan.networks.segmenters import build_split_segmenter

    enc, _ = build_split_segmenter(3, 1, 3, (4, 4, 4, 8, 8, 4))
    loss = SegmentationPerceptionLoss(enc, levels=(0, 1))
    x = torch.randn(1, 1, 32, 32, 32)
    assert float(loss(x, x)) == 0.0
    y = x + 0.5
    y.requires_grad_(True)
    value = loss(y, x, torch.ones(1, 1, 32, 32, 32))
    value.backward()
    assert float(value.detach()) > 0 and y.grad is not None and all(p.grad is None for p in enc.parameters())


def test_a_pair_on_two_grids_is_refused_naming_both(tmp_path):
    from medgan.pipelines.paired.trainer import paired_volume

    mr = read_volume(PHANTOM / "mr/phantom-mr-01.nii.gz")
    ct = read_volume(PHANTOM / "paired/phantom-mr-01_ct.nii.gz")
    shifted = ct.affine.copy()
    shifted[:3, 3] += 2.0
    bad = write_nifti_file(tmp_path / "ct_shifted.nii.gz", ct.array, shifted)
    cfg = paired_config(tmp_path)
    with pytest.raises(VolumeError) as err:
        paired_volume(cfg, {"image": str(PHANTOM / "mr/phantom-mr-01.nii.gz"), "target": str(bad)})
    assert "ct_shifted.nii.gz" in str(err.value) and "phantom-mr-01.nii.gz" in str(err.value) and "affine" in str(err.value)
    small = write_nifti_file(tmp_path / "ct_small.nii.gz", ct.array[:-2], ct.affine)
    with pytest.raises(VolumeError, match="shape"):
        paired_volume(cfg, {"image": str(PHANTOM / "mr/phantom-mr-01.nii.gz"), "target": str(small)})
    assert mr.array.shape == ct.array.shape


def test_synthrad_and_msd_layouts(tmp_path):
    import SimpleITK as sitk

    from medgan.data.datalist import datalist_from_msd, datalist_from_synthrad

    arr = np.zeros((4, 5, 6), dtype=np.int16)
    for case in ("1ABA005", "1ABA009"):
        (tmp_path / "sr" / case).mkdir(parents=True)
        for name in ("mr", "ct", "mask"):
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "sr" / case / f"{name}.mha"))
    entries = datalist_from_synthrad(tmp_path / "sr")
    assert [os.path.basename(os.path.dirname(e["image"])) for e in entries] == ["1ABA005", "1ABA009"]
    assert entries[0]["target"].endswith("1ABA005/ct.mha") and entries[0]["mask"].endswith("1ABA005/mask.mha")
    os.remove(tmp_path / "sr/1ABA009/mask.mha")
    with pytest.raises(ValueError, match="1ABA009: case folder without mask"):
        datalist_from_synthrad(tmp_path / "sr")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"training": [{"image": "sr/1ABA005/mr.mha", "target": "sr/1ABA005/ct.mha", "mask": "sr/1ABA005/mask.mha"}]}))
    msd = datalist_from_msd(tmp_path / "dataset.json")
    assert msd[0]["target"] == str((tmp_path / "sr/1ABA005/ct.mha").resolve()) and msd[0]["mask"].endswith("mask.mha")


def test_regression_lowers_the_masked_l1_on_the_phantom(tmp_path):
    from medgan.pipelines.paired.trainer import PairedTrainer

    tr = PairedTrainer(paired_config(tmp_path, "model=regression", "optim.lr=0.003", "optim.n_iters=30"), progress=False)
    b = tr.batch("pairs", 1)
    x, y, m = b["x"][:, 0:1], b["x"][:, 1:2], b["x"][:, 2:3]

    def l1() -> float:
        with torch.no_grad():
            return float(masked_l1(tr.nets[tr.g_name](x), y, m))

    before = l1()
    tr.fit(30)
    after = l1()
    assert after < 0.7 * before, (before, after)


def test_pix2pix_trains_with_a_perception_loss_and_resumes(tmp_path, tiny_checkpoint):
    from medgan.pipelines.paired.trainer import PairedTrainer

    cfg = paired_config(tmp_path, "loss.lambda_perception=1.0", f"loss.perception_checkpoint={tiny_checkpoint}")
    ckpt = PairedTrainer(cfg, progress=False).fit(2)
    logs = (tmp_path / "losses.csv").read_text()
    assert "perception" in logs and "D_CT" in logs
    resumed = PairedTrainer(cfg, resume=ckpt, progress=False)
    assert resumed.iteration == 2
    with pytest.raises(ValueError, match="same spacing"):
        PairedTrainer(paired_config(tmp_path / "b", "loss.lambda_perception=1.0", f"loss.perception_checkpoint={tiny_checkpoint}",
                                    "train.spacing_mm=[3,3,3]"), progress=False)


@pytest.mark.parametrize("kind", ["LPS", "oblique"])
def test_paired_inference_stays_on_the_input_grid(tmp_path, paired_checkpoint, kind):
    import nibabel as nib

    from medgan.pipelines.cyclegan.translate import translate

    mr = read_volume(PHANTOM / "mr/phantom-mr-01.nii.gz")
    affine = axcodes_affine("LPS", (4, 4, 4)) if kind == "LPS" else oblique_affine((4.0, 4.0, 4.0))
    src = write_nifti_file(tmp_path / "in.nii.gz", mr.array[::2, ::2, ::2].copy(), affine)
    rep = translate(paired_checkpoint, [src], tmp_path / "out", "mr2ct")
    assert rep.ok, rep.failed
    out = nib.load(str(tmp_path / "out/in_mr2ct.nii.gz"))
    assert out.shape == mr.array[::2, ::2, ::2].shape and np.allclose(out.affine, affine, atol=1e-5)
    hu = np.asarray(out.dataobj)
    assert -1024 - 1e-3 <= hu.min() and hu.max() <= 2000 + 1e-3
    side = json.loads((tmp_path / "out/in_mr2ct.json").read_text())
    assert side["config"]["pipeline"] == "paired"
    with pytest.raises(ValueError, match="mr2ct only"):
        translate(paired_checkpoint, [src], tmp_path / "out2", "ct2mr")


def test_cormack_to_hu_follows_the_clinical_toolbox():
    from medgan.data.intensity import cormack_to_hu

    c = np.array([0.0, 900.0, 1450.0, 3100.0, 3200.0])
    # clinical_c2h: C - 1024 up to 900 units, then an 11-fold compression up to 3100, then C - 3024
    assert np.allclose(cormack_to_hu(c), [-1024.0, -124.0, -74.0, 76.0, 176.0])
    with pytest.raises(ValueError, match="negative"):
        cormack_to_hu(np.array([-1.0]))
