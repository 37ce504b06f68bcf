"""Training: losses fall, checkpoints hold the full state, resume continues exactly."""

import csv
import math

import pytest
import torch

from medgan.checkpoint import CheckpointError, load_training_state
from medgan.config import ConfigError, load_config
from medgan.pipelines.cyclegan.config import CycleGANConfig
from medgan.pipelines.cyclegan.trainer import CycleGANTrainer
from tests.conftest import ROOT, assert_resumed_losses_match, tiny_config


def test_training_steps_lower_the_cycle_loss(tmp_path):
    tr = CycleGANTrainer(tiny_config(tmp_path, "optim.lr=1e-3", "optim.n_iters=100"), progress=False)
    a, b = tr.batch("CT", 1), tr.batch("MR", 1)
    cycles = []
    for it in range(1, 16):
        tr.iteration = it
        logs = tr.train_step(a, b)
        cycles.append(logs["cycle_CT"] + logs["cycle_MR"])
        assert all(math.isfinite(v) for v in logs.values())
    assert sum(cycles[-3:]) / 3 < 0.7 * sum(cycles[:3]) / 3, cycles


AUGMENTED = ("domain_a.augment.rotate_deg=10", "domain_a.augment.scale=0.1", "domain_a.augment.spatial_prob=1",
             "domain_b.augment.bias_field=1", "domain_b.augment.histogram_shift=1", "domain_b.augment.gibbs=1",
             "domain_b.augment.contrast=1", "domain_a.intensity.knots=[[-200,-0.6],[300,0.6]]", "optim.seg_lr=1e-3",
             "domain_a.augment.synth=1", "domain_b.augment.synth=1", "loss.lambda_class_intensity=5")


@pytest.mark.parametrize("extra, total", [((), 4), (AUGMENTED, 4), (("optim.seg_pretrain_iters=2",), 6)],
                         ids=["plain", "augmented", "segmenters-first"])
def test_resume_gives_the_same_next_losses(tmp_path, extra, total):
    full = CycleGANTrainer(tiny_config(tmp_path / "full", "optim.n_iters=4", "train.pool_size=1", *extra), progress=False)
    full.fit()
    part = CycleGANTrainer(tiny_config(tmp_path / "part", "optim.n_iters=4", "train.pool_size=1", *extra), progress=False)
    ckpt = part.fit(n_iters=2)  # (with segmenters first: resumed at the end of their stage)
    resumed = CycleGANTrainer(tiny_config(tmp_path / "part", "optim.n_iters=4", "train.pool_size=1", *extra), resume=ckpt, progress=False)
    assert resumed.iteration == 2
    resumed.fit()
    assert_resumed_losses_match(tmp_path / "full", tmp_path / "part", total, 2)


def test_label_synthesis_replaces_only_labelled_segmenter_inputs(tmp_path):
    tr = CycleGANTrainer(tiny_config(tmp_path, "optim.n_iters=1", "domain_b.augment.synth=1"), progress=False)
    x = torch.linspace(-1, 1, 2 * 16 * 16 * 16).reshape(2, 1, 16, 16, 16)
    y = torch.zeros_like(x, dtype=torch.long)
    y[:, :, 4:12, 4:12, 4:12] = 1
    out = tr.seg_input("MR", x, 0, y, torch.tensor([True, False]))
    assert not torch.equal(out[0], x[0]) and torch.equal(out[1], x[1])
    assert torch.equal(tr.seg_input("CT", x, 0, y, torch.tensor([True, True])), x)  # CT: no synthesis configured
    assert torch.equal(tr.seg_input("MR", x, 0), x)  # without labels there is nothing to synthesize from


def test_segmenter_pretraining_updates_only_the_segmenters_then_trains_jointly(tmp_path):
    tr = CycleGANTrainer(tiny_config(tmp_path, "optim.seg_pretrain_iters=3", "optim.n_iters=2"), progress=False)
    assert tr.total_iterations() == 5
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in tr.nets.items()}

    def changed(name: str) -> bool:
        return any(not torch.equal(p, q) for p, q in zip(tr.nets[name].parameters(), before[name]))

    tr.fit(n_iters=3)
    assert changed("S_MR")  # (its patches are labelled; these CT patches happen to be of the unlabelled CT)
    assert not any(changed(k) for k in ("G_CT2MR", "G_MR2CT", "D_CT", "D_MR"))
    assert tr.schedulers["G"].last_epoch == 0  # the joint schedule has not started
    tr.fit()
    assert tr.iteration == 5 and changed("G_CT2MR") and changed("D_MR")
    rows = list(csv.DictReader((tmp_path / "losses.csv").open()))
    assert [r["G_total"] != "" for r in rows] == [False, False, False, True, True]


def test_segmenter_finetuning_freezes_the_generators_and_resumes_exactly(tmp_path):
    extra = ("optim.n_iters=2", "optim.seg_finetune_iters=4", "optim.seg_lr=1e-3", "train.pool_size=1", "train.png_every=5")
    tr = CycleGANTrainer(tiny_config(tmp_path / "full", *extra), progress=False)
    assert tr.total_iterations() == 6
    tr.fit(n_iters=2)
    frozen = {k: [p.detach().clone() for p in tr.nets[k].parameters()] for k in ("G_CT2MR", "G_MR2CT", "D_CT", "D_MR", "S_MR")}
    tr.fit()
    for k in ("G_CT2MR", "G_MR2CT", "D_CT", "D_MR"):
        assert all(torch.equal(p, q) for p, q in zip(tr.nets[k].parameters(), frozen[k])), k
    assert any(not torch.equal(p, q) for p, q in zip(tr.nets["S_MR"].parameters(), frozen["S_MR"]))
    rows = list(csv.DictReader((tmp_path / "full" / "losses.csv").open()))
    # seg_lr over the first half of the 4 fine-tuning iterations, then falling linearly towards 0
    assert [float(r["seg_lr"]) for r in rows[2:]] == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])
    assert all(r["G_total"] == "" for r in rows[2:]) and any(r["S_MR_fake"] != "" for r in rows[2:])
    assert (tmp_path / "full" / "samples" / "iter_000005.png").is_file()  # drawn in the fine-tuning stage
    assert (tmp_path / "full" / "checkpoints" / "iter_000002").is_dir()  # the segmenters before fine-tuning
    part = CycleGANTrainer(tiny_config(tmp_path / "part", *extra), progress=False)
    ckpt = part.fit(n_iters=4)  # resumed in the middle of the fine-tuning stage
    CycleGANTrainer(tiny_config(tmp_path / "part", *extra), resume=ckpt, progress=False).fit()
    assert_resumed_losses_match(tmp_path / "full", tmp_path / "part", 6, 4)


def test_class_intensity_targets_are_the_real_organs_means_and_train_the_generators(tmp_path):
    import nibabel as nib
    import numpy as np

    from medgan.pipelines.cyclegan.trainer import domain_preprocessor

    cfg = tiny_config(tmp_path, "loss.lambda_class_intensity=10", "optim.n_iters=1")
    tr = CycleGANTrainer(cfg, progress=False)
    # the CT target of each organ, back in HU, is that organ's mean HU in the labelled phantom CT file
    ct = nib.load(ROOT / "data_samples/phantom/ct/phantom-ct-01.nii.gz").get_fdata()
    lab = nib.load(ROOT / "data_samples/phantom/ct/phantom-ct-01_labels.nii.gz").get_fdata()
    scaling = domain_preprocessor(cfg, cfg.domain_a).window_scaling
    for c, name in [(1, "liver"), (3, "kidney_right")]:
        hu = float(scaling.inverse(tr.class_means["CT"][cfg.classes.index(name) + 1].cpu().numpy()))
        assert abs(hu - ct[lab == c].mean()) < 0.5, (name, hu, ct[lab == c].mean())
    a = next(batch for batch in (tr.batch("CT", i) for i in range(1, 20)) if bool(batch["m"].all()))  # the labelled CT
    b = tr.batch("MR", 1)
    tr.iteration = 1
    logs = tr.train_step(a, b)
    assert logs["intensity_CT"] > 0 and logs["intensity_MR"] > 0  # both directions: the MRs are labelled too
    plain = CycleGANTrainer(tiny_config(tmp_path / "plain", "optim.n_iters=1", "loss.lambda_class_intensity=0"), progress=False)
    plain.iteration = 1
    assert "intensity_CT" not in plain.train_step(a, b)


def test_class_intensity_needs_classes():
    with pytest.raises(ConfigError, match="lambda_class_intensity"):
        load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", ["classes=[]", "loss.lambda_class_intensity=1"])


@pytest.mark.parametrize("stage", ["seg_pretrain_iters", "seg_finetune_iters"])
def test_segmenter_stages_need_classes(stage):
    with pytest.raises(ConfigError, match=stage):
        load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", ["classes=[]", f"optim.{stage}=5"])


def test_checkpoint_holds_full_state_and_loads_weights_only(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"weights.safetensors", "training_state.pt", "config.yaml", "meta.json"} <= names
    state = load_training_state(tiny_checkpoint)
    assert set(state) >= {"iteration", "world_size", "optimizers", "schedulers", "ranks"}
    assert set(state["optimizers"]) == {"G", "D", "S"}
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    assert set(state["ranks"][0]) == {"rng", "pools"} and set(state["ranks"][0]["pools"]) == {"CT", "MR"}


def test_malicious_training_state_is_refused(tmp_path, tiny_checkpoint):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, bad / "training_state.pt")
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        load_training_state(bad)


def test_checkpoint_from_another_model_is_refused(tmp_path, tiny_checkpoint):
    cfg = tiny_config(tmp_path, "network.ngf=6")
    with pytest.raises(CheckpointError, match="do not fit"):
        CycleGANTrainer(cfg, resume=tiny_checkpoint, progress=False)


@pytest.mark.parametrize("override, message", [
    ("train.bogus=1", "train.bogus: Extra inputs are not permitted"),
    ("optim.n_iters=many", "optim.n_iters"),
    ("loss.gan_mode=wgan-gp", "loss.gan_mode"),
    ("notakey", "must look like"),
])
def test_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", [override])


def test_label_ids_absent_from_class_map(tmp_path):
    import json

    cm = tmp_path / "cm.json"
    table = json.loads((ROOT / "data_samples/phantom/classmap.json").read_text())
    del table["phantom"]["9"]  # the phantom's autochthon_left id becomes unknown
    table["phantom"]["10"] = "autochthon_left"
    cm.write_text(json.dumps(table))
    cfg = tiny_config(tmp_path, f"domain_a.labels.classmap={cm}")
    with pytest.raises(ValueError, match=r"phantom-ct-01_labels.nii.gz: label ids \[9\]"):
        CycleGANTrainer(cfg, progress=False)


def test_patch_smaller_than_the_networks_take_is_refused_up_front(tmp_path):
    cfg = tiny_config(tmp_path, "train.patch_size=[8,8,8]")
    with pytest.raises(ValueError, match=r"train.patch_size=\[8, 8, 8\] is too small for .*D_CT.*all networks take train.patch_size=\[32, 32, 32\]"):
        CycleGANTrainer(cfg, progress=False)
