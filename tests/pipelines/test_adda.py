"""ADDA: frozen source networks, discriminator inputs, feature alignment, end to end, bad input."""

import copy
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from medgan.checkpoint import CheckpointError
from medgan.config import ConfigError, load_config
from medgan.pipelines.adda.config import AddaConfig
from medgan.pipelines.adda.segment import AddaSegmenter, evaluate_adda, segment
from medgan.pipelines.adda.trainer import AddaTrainer, train_adda
from tests.conftest import DATA_DIR, PHANTOM, ROOT, requires_data

TINY = ["network.seg_features=[4,4,4,8,8,4]", "network.disc_channels=8", "train.patch_size=[32,32,16]",
        "inference.roi_size=[32,32,16]", "train.checkpoint_every=1000", "train.log_every=1000"]


def phantom_config(tmp, *overrides):
    os.chdir(ROOT)
    table = {
        "classes": ["liver", "spleen", "kidney_right", "kidney_left", "aorta", "vertebrae"],
        "source": {"name": "CT", "intensity": {"kind": "window"}, "labels": {"classmap": str(PHANTOM / "classmap.json"), "space": "phantom"},
                   "data": {"folder": str(PHANTOM / "ct")}},
        "target": {"name": "MR", "intensity": {"kind": "percentile"}, "labels": {"classmap": str(PHANTOM / "classmap.json"), "space": "phantom"},
                   "data": {"folder": str(PHANTOM / "mr")}},
        "optim": {"n_source_iters": 2, "n_adapt_iters": 2, "n_oracle_iters": 2},
        "train": {"spacing_mm": [4, 4, 4], "output_dir": str(tmp)},
    }
    import yaml

    path = tmp / "adda.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(table))
    return load_config(AddaConfig, path, [*TINY, *overrides])


@pytest.mark.parametrize("patches, all_labelled", [("labelled", True), ("any", False)])
def test_source_stage_patches_come_from_labelled_volumes(tmp_path, patches, all_labelled):
    tr = AddaTrainer(phantom_config(tmp_path, f"train.segmenter_patches={patches}"), progress=False)  # phantom-ct-02 is unlabelled
    flags = [bool(tr.batch("CT", it, segmenter_only=True)["m"].all()) for it in range(1, 13)]
    assert all(flags) == all_labelled
    assert not all(bool(tr.batch("CT", it)["m"].all()) for it in range(1, 13))  # adaptation still sees every CT


def test_adaptation_keeps_source_frozen_and_feeds_discriminators(tmp_path):
    tr = AddaTrainer(phantom_config(tmp_path), progress=False)
    frozen = {n: copy.deepcopy(tr.nets[n].state_dict()) for n in ("E_src", "H")}
    before_t = copy.deepcopy(tr.nets["E_tgt"].state_dict())
    seen = {}
    for lv in tr.cfg.loss.align_levels:
        tr.nets[f"D_level{lv}"].register_forward_hook(lambda m, inp, out, lv=lv: seen.setdefault(lv, set()).add(tuple(inp[0].shape)))
    for it in range(1, 4):
        tr.adapt_step(tr.batch("CT", it)["x"], tr.batch("MR", it)["x"])
    for n, sd in frozen.items():
        for k, v in tr.nets[n].state_dict().items():
            assert torch.equal(v, sd[k]), f"{n}.{k} changed during adaptation"
    assert any(not torch.equal(v, before_t[k]) for k, v in tr.nets["E_tgt"].state_dict().items())
    feats = (4, 4, 4, 8, 8)
    for lv in tr.cfg.loss.align_levels:  # source and target features of level lv: (B, f_lv, 32/2^lv, 32/2^lv, 16/2^lv)
        assert seen[lv] == {(1, feats[lv], 32 // 2**lv, 32 // 2**lv, 16 // 2**lv)}


def test_adaptation_moves_target_features_towards_source(tmp_path):
    """On a synthetic shift (target = source + 1), the adaptation step brings the target
    encoder's feature statistics towards the source's. The encoders here have no normalisation
    layer, so the shift reaches the features (instance norm would hide an offset)."""
    from medgan.networks.discriminators import FeatureDiscriminator

    torch.manual_seed(0)
    tr = AddaTrainer(phantom_config(tmp_path, "loss.align_levels=[4]"), progress=False)

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)

        def forward(self, x):
            h = torch.nn.functional.leaky_relu(self.conv(x), 0.2)
            return [h] * 5

    tr.nets["E_src"], tr.nets["D_level4"] = Enc(), FeatureDiscriminator(3, 4, 16)
    tr.nets["E_tgt"] = copy.deepcopy(tr.nets["E_src"])
    tr.optimizers["target"] = torch.optim.Adam(tr.nets["E_tgt"].parameters(), 2e-3, betas=(0.5, 0.999))
    tr.optimizers["disc"] = torch.optim.Adam(tr.nets["D_level4"].parameters(), 2e-3, betas=(0.5, 0.999))
    xs = [torch.rand(2, 1, 12, 12, 8) * 2 - 1 for _ in range(8)]

    def gap() -> float:
        with torch.no_grad():
            fs = torch.stack([tr.nets["E_src"](x)[4].mean((0, 2, 3, 4)) for x in xs]).mean(0)
            ft = torch.stack([tr.nets["E_tgt"](x + 1.0)[4].mean((0, 2, 3, 4)) for x in xs]).mean(0)
        return float((fs - ft).norm())

    start = gap()
    for i in range(150):
        tr.adapt_step(xs[i % 8], xs[(i + 3) % 8] + 1.0)
    assert gap() < 0.5 * start, (start, gap())


def test_resume_continues_the_stages(tmp_path):
    ckpt = AddaTrainer(phantom_config(tmp_path, "optim.n_oracle_iters=0", "optim.n_adapt_iters=0"), progress=False).fit()
    tr = AddaTrainer(phantom_config(tmp_path, "optim.n_oracle_iters=0"), resume=ckpt, progress=False)
    assert tr.iteration == 2 and tr.stage(3) == "adapt"
    final = tr.fit()
    assert final.name == "iter_000004"
    torch.testing.assert_close(tr.nets["E_src"].state_dict()["conv_0.conv_0.conv.weight"],
                               AddaSegmenter(ckpt).nets["E_src"].state_dict()["conv_0.conv_0.conv.weight"])


def test_bad_config_and_foreign_checkpoint(tmp_path, tiny_checkpoint):
    with pytest.raises(ConfigError, match="align_levels"):
        phantom_config(tmp_path, "loss.align_levels=[7]")
    with pytest.raises(CheckpointError, match="pipeline 'cyclegan', expected 'adda'"):
        AddaSegmenter(tiny_checkpoint)


@requires_data
def test_tiny_end_to_end_on_real_abdomen(tmp_path):
    cm = DATA_DIR / "classmaps/totalsegmentator.json"
    cfg = load_config(AddaConfig, ROOT / "configs/adda_abdomen.yaml", [
        *TINY, f"source.labels.classmap={cm}", f"target.labels.classmap={cm}", f"source.data.folder={DATA_DIR / 'abdomen/ct'}",
        f"target.data.folder={DATA_DIR / 'abdomen/mr'}", "optim.n_source_iters=2", "optim.n_adapt_iters=2",
        "optim.n_oracle_iters=2", f"train.output_dir={tmp_path / 'run'}"])
    ckpt = train_adda(cfg, progress=False)
    mr, lab = DATA_DIR / "abdomen/mr/ts-mr-01.nii.gz", DATA_DIR / "abdomen/mr/ts-mr-01_labels.nii.gz"
    report = evaluate_adda(ckpt, [mr], [lab])
    assert len(report["dice"]) == 3 and all(set(r) == set(cfg.classes) for r in report["dice"].values())
    rep = segment(ckpt, [mr, DATA_DIR / "head/dicom/adi-t1-memprage", tmp_path / "missing.nii.gz"], tmp_path / "seg")
    assert len(rep.written) == 2 and list(rep.failed) == [str(tmp_path / "missing.nii.gz")]
    out, src = nib.load(str(tmp_path / "seg/ts-mr-01_adda_seg.nii.gz")), nib.load(str(mr))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-5)
    # test-time augmentation draws from the training augmentation: this model trained without any
    with pytest.raises(ValueError, match="MR trained without the augmentation"):
        segment(ckpt, [mr], tmp_path / "seg_tta", tta=3)
    assert not (tmp_path / "seg_tta" / "ts-mr-01_adda_seg.nii.gz").exists()


@requires_data
def test_test_time_augmented_segmentation_is_recorded_and_on_the_input_grid(tmp_path):
    cm = DATA_DIR / "classmaps/totalsegmentator.json"
    cfg = load_config(AddaConfig, ROOT / "configs/adda_abdomen.yaml", [
        *TINY, f"source.labels.classmap={cm}", f"target.labels.classmap={cm}", f"source.data.folder={DATA_DIR / 'abdomen/ct'}",
        f"target.data.folder={DATA_DIR / 'abdomen/mr'}", "optim.n_source_iters=1", "optim.n_adapt_iters=1",
        "optim.n_oracle_iters=0", "target.augment={rotate_deg: 10, scale: 0.1}", f"train.output_dir={tmp_path / 'run'}"])
    ckpt = train_adda(cfg, progress=False)
    mr = DATA_DIR / "abdomen/mr/ts-mr-01.nii.gz"
    rep = segment(ckpt, [mr], tmp_path / "seg", tta=3)
    assert rep.ok
    out, src = nib.load(str(tmp_path / "seg/ts-mr-01_adda_seg.nii.gz")), nib.load(str(mr))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-5)
    sidecar = json.loads(next((tmp_path / "seg").glob("ts-mr-01_adda_seg*.json")).read_text())
    assert sidecar["seg_tta"]["passes"] == 3  # what made the map is recorded, and a rerun without TTA is another task


def test_msd_dataset_with_ct_and_mr_in_one_list(tmp_path):
    """AMOS-style: one MSD dataset.json lists CT and MR cases; `include` picks each domain."""
    import json
    import shutil

    root = tmp_path / "amos"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    entries = []
    for i, (mod, n) in enumerate([("ct", "01"), ("ct", "02"), ("mr", "01"), ("mr", "02")]):
        case = f"amos_{'0' if mod == 'ct' else '5'}{i:03d}"
        shutil.copy(PHANTOM / f"{mod}/phantom-{mod}-{n}.nii.gz", root / "imagesTr" / f"{case}.nii.gz")
        lab = PHANTOM / f"{mod}/phantom-{mod}-{n}_labels.nii.gz"
        if lab.is_file():
            shutil.copy(lab, root / "labelsTr" / f"{case}.nii.gz")
            entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        else:
            entries.append({"image": f"./imagesTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries}))
    cfg = phantom_config(tmp_path, f"source.data={{msd: {root / 'dataset.json'}, include: '*amos_0*'}}",
                         f"target.data={{msd: {root / 'dataset.json'}, include: '*amos_5*'}}")
    tr = AddaTrainer(cfg, progress=False)
    assert len(tr.datasets["CT"].volumes) == 2 and len(tr.datasets["MR"].volumes) == 2
    assert tr.fit().name == "iter_000006"
