"""CVAE augmentation: loss terms, reproducible sampling, geometry of samples, datalist, bad input."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medgan.checkpoint import CheckpointError
from medgan.config import ConfigError, load_config
from medgan.networks.vae import SpatialCVAE, vae_loss
from medgan.pipelines.cvae.augment import run_augmentation
from medgan.pipelines.cvae.config import CVAEConfig
from medgan.pipelines.cvae.sample import CVAESampler, sample
from medgan.pipelines.cvae.trainer import train_cvae
from medgan.pipelines.data_config import DataSource, domain_preprocessor
from tests.conftest import DATA_DIR, PHANTOM, ROOT, requires_data

CLASSES = ["liver", "spleen", "kidney_right", "kidney_left", "aorta", "vertebrae"]


def config(tmp, *overrides, folder=PHANTOM / "mr", classmap=PHANTOM / "classmap.json", space="phantom", spacing=4):
    os.chdir(ROOT)
    table = {"classes": CLASSES,
             "domain": {"name": "MR", "intensity": {"kind": "percentile"}, "labels": {"classmap": str(classmap), "space": space},
                        "data": {"folder": str(folder)}},
             "network": {"latent_channels": 2, "channels": [4, 8, 8]}, "optim": {"n_iters": 2},
             "train": {"spacing_mm": [spacing] * 3, "patch_size": [32, 32, 16], "holdout_fraction": 0.3, "output_dir": str(tmp / "run")},
             "sample": {"n_per_label": 2}, "augment": {"seg_iters": 2, "seg_features": [4, 4, 4, 8, 8, 4]},
             "inference": {"roi_size": [32, 32, 16]}}
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cvae.yaml").write_text(yaml.safe_dump(table))
    return load_config(CVAEConfig, tmp / "cvae.yaml", list(overrides))


def test_loss_terms_match_closed_forms():
    torch.manual_seed(0)
    m = SpatialCVAE(3, 1, 3, 2, (4, 4, 4), prior="learned")
    x = torch.rand(2, 1, 16, 16, 8) * 2 - 1
    out = m(x, torch.randint(0, 3, (2, 1, 16, 16, 8)))
    loss = vae_loss(out, x, beta=0.5, sigma=0.2)
    rec = ((out.recon - x) ** 2).flatten(1).sum(1).div(2 * 0.2**2).mean()
    q = torch.distributions.Normal(out.mu, (0.5 * out.logvar).exp())
    p = torch.distributions.Normal(out.prior_mu, (0.5 * out.prior_logvar).exp())
    kl = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean()
    torch.testing.assert_close(loss["recon"], rec)
    torch.testing.assert_close(loss["kl"], kl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss["total"], rec + 0.5 * kl, rtol=1e-5, atol=1e-3)
    lap = vae_loss(out, x, recon="laplace", sigma=0.2)["recon"]
    torch.testing.assert_close(lap, (out.recon - x).abs().flatten(1).sum(1).div(0.2).mean())


@pytest.fixture(scope="module")
def cvae_checkpoint(tmp_path_factory):
    return train_cvae(config(tmp_path_factory.mktemp("cvae")), progress=False)


def test_sampling_is_reproducible_and_keeps_geometry(tmp_path, cvae_checkpoint):
    lab = PHANTOM / "mr/phantom-mr-01_labels.nii.gz"
    a = sample(cvae_checkpoint, [lab], 2, tmp_path / "a", seed=5)
    b = sample(cvae_checkpoint, [lab], 2, tmp_path / "b", seed=5)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(".nii.gz"))
    assert len(names) == 4  # 2 images + 2 label maps
    src = nib.load(str(lab))
    for n in names:
        x, y = nib.load(str(tmp_path / "a" / n)), nib.load(str(tmp_path / "b" / n))
        np.testing.assert_array_equal(x.get_fdata(), y.get_fdata())  # same seed, same sample
        assert x.shape == src.shape and np.allclose(x.affine, src.affine)  # the label map's grid
    s0 = nib.load(str(tmp_path / "a" / names[0])).get_fdata()
    s1 = nib.load(str(tmp_path / "a" / names[2])).get_fdata()
    assert not np.allclose(s0, s1)  # two seeds, two samples
    ids = set(np.unique(nib.load(str(tmp_path / "a" / names[1])).get_fdata()).astype(int))
    assert ids <= {0, 1, 2, 3, 4, 5, 6}  # raw ids of the phantom label space
    assert a.name == "dataset.json" and b.is_file()


def test_datalist_loads_in_the_segmenter_dataset(tmp_path, cvae_checkpoint):
    path = sample(cvae_checkpoint, [PHANTOM / "mr/phantom-mr-01_labels.nii.gz"], 2, tmp_path, seed=1)
    entries = DataSource(msd=path).datalist()
    cfg = config(tmp_path / "c")
    pre = domain_preprocessor(cfg.domain, cfg.train.spacing_mm, cfg.classes)
    item, _ = pre.training_volume(entries[0], cfg.train.patch_size)
    assert item["has_label"] and item["label"].max() > 0 and item["image"].shape[1:] >= (32, 32, 16)


def test_bad_inputs(tmp_path, cvae_checkpoint, tiny_checkpoint):
    with pytest.raises(ConfigError, match="divisible by 8"):
        config(tmp_path, "train.patch_size=[30,32,16]")
    with pytest.raises(CheckpointError, match="expected 'cvae'"):
        CVAESampler(tiny_checkpoint)
    bad = tmp_path / "bad_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 12), 77, np.int16), np.eye(4)), str(bad))
    with pytest.raises(ValueError, match=r"bad_labels.nii.gz: label ids \[77\]"):
        sample(cvae_checkpoint, [bad], 1, tmp_path / "o")


def test_augmentation_comparison_runs(tmp_path, cvae_checkpoint):
    report = run_augmentation(config(tmp_path), checkpoint=cvae_checkpoint)
    assert set(report["heldout_dice"]) == {"real only", "real + synthetic"}
    q = report["sample_quality"]
    assert set(q) == {"intensity", "label_fidelity", "diversity_mean_abs_diff"} and q["diversity_mean_abs_diff"] > 0


@requires_data
def test_tiny_run_on_real_abdominal_mr(tmp_path):
    cm = DATA_DIR / "classmaps/totalsegmentator.json"
    cfg = config(tmp_path, folder=DATA_DIR / "abdomen/mr", classmap=cm, space="total_mr", spacing=3)
    report = run_augmentation(cfg)
    assert report["synthetic_pairs"] == 2 and "real only" in report["heldout_dice_mean"]


def test_sampling_batch_goes_past_a_bad_label_map_and_resumes(tmp_path, cvae_checkpoint):
    import json

    from medgan.io import VolumeError

    good = PHANTOM / "mr/phantom-mr-01_labels.nii.gz"
    bad = tmp_path / "bad_labels.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 12), 77, np.int16), np.eye(4)), str(bad))
    out = tmp_path / "o"
    with pytest.raises(VolumeError, match="label ids"):
        sample(cvae_checkpoint, [bad, good], 1, out, seed=2)
    entries = json.loads((out / "dataset.json").read_text())["training"]
    assert len(entries) == 1 and (out / entries[0]["image"]).is_file() and (out / entries[0]["label"]).is_file()
    before = (out / entries[0]["image"]).stat().st_mtime_ns
    with pytest.raises(VolumeError, match="label ids"):  # the same command again: finished label maps are skipped
        sample(cvae_checkpoint, [bad, good], 1, out, seed=2)
    assert (out / entries[0]["image"]).stat().st_mtime_ns == before
    assert json.loads((out / "dataset.json").read_text())["training"] == entries
    path = sample(cvae_checkpoint, [good], 1, out, seed=2)  # other seeds for it (its index moved): sampled again
    assert json.loads(path.read_text())["training"] != entries
