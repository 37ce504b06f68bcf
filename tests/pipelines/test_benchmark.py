"""The multi-subject benchmark: a disjoint, stable split; a tiny run writes a complete table."""

import json

import numpy as np
import pytest

from medgan.config import load_config
from medgan.pipelines.benchmark.config import ROWS, BenchmarkConfig, Split
from tests.conftest import DATA_DIR, ROOT, requires_data

CHAOS = [f"chaos-t2-{s}" for s in ("01", "02", "05", "08", "13", "15", "19", "20", "22", "31", "32", "34", "36", "37", "39")]


def test_the_versioned_split_is_disjoint_complete_and_stable():
    split = json.loads((ROOT / "configs/benchmarks/chaos_split.json").read_text())
    assert split["version"] == 1
    train, test, _ = Split(file=ROOT / "configs/benchmarks/chaos_split.json").subjects(CHAOS)
    assert not set(train) & set(test) and sorted(train + test) == sorted(CHAOS)
    assert test == ["chaos-t2-05", "chaos-t2-15", "chaos-t2-22", "chaos-t2-34", "chaos-t2-39"]  # fixed: never re-drawn


def test_the_validation_split_holds_training_subjects_only():
    """Settings are chosen on chaos_split_validation.json: the test subjects are in neither part."""
    train, test, _ = Split(file=ROOT / "configs/benchmarks/chaos_split.json").subjects(CHAOS)
    v_train, v_test, _ = Split(file=ROOT / "configs/benchmarks/chaos_split_validation.json").subjects(CHAOS)
    assert not set(v_train) & set(v_test) and sorted(v_train + v_test) == sorted(train)
    assert not set(v_train + v_test) & set(test)


def test_k_folds_cover_every_subject_once():
    tests = [Split(folds=5, fold=f).subjects(CHAOS)[1] for f in range(5)]
    assert sorted(s for t in tests for s in t) == sorted(CHAOS)
    with pytest.raises(ValueError, match="not in the data"):
        Split(file=ROOT / "configs/benchmarks/chaos_split.json").subjects(CHAOS[:3])


def test_identical_maps_score_dice_1_and_hd95_0():
    from medgan.metrics import dice_per_class, hd95_per_class

    lab = np.zeros((20, 20, 10), int)
    lab[2:8, 2:8, 2:6], lab[10:16, 10:18, 3:8] = 1, 2
    assert dice_per_class(lab, lab, ["a", "b"]) == {"a": 1.0, "b": 1.0}
    assert hd95_per_class(lab, lab, ["a", "b"], (1.25, 1.25, 7.7)) == {"a": 0.0, "b": 0.0}


def tiny_config(tmp_path, *overrides) -> BenchmarkConfig:  # noqa: ANN001
    """chaos.yaml with tiny networks and iterations: training subject chaos-t2-01, test chaos-t2-02."""
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"version": 0, "train": ["chaos-t2-01"], "test": ["chaos-t2-02"]}))
    tiny_cg = ["network.ngf=4", "network.n_res_blocks=1", "network.ndf=4", "network.d_layers=2", "train.pool_size=2",
               "inference.sw_batch_size=4", "inference.overlap=0"]
    return load_config(BenchmarkConfig, ROOT / "configs/benchmarks/chaos.yaml", [
        f"split.file={split}", "iters=2", "seg_iters=2", "patch_size=[32,32,32]", "seg_features=[4,4,4,8,8,4]", f"output_dir={tmp_path / 'b'}",
        f"cyclegan={tiny_cg}", "adda=[network.disc_channels=4, inference.sw_batch_size=4, inference.overlap=0]", "device=cpu", *overrides])


@requires_data
def test_tiny_benchmark_on_two_chaos_subjects_writes_a_complete_table(tmp_path, caplog):
    cfg = tiny_config(tmp_path)
    assert cfg.target.folder == DATA_DIR.resolve() / "abdomen/mr-chaos"
    from medgan.pipelines.benchmark.run import run_benchmark

    res = run_benchmark(cfg)
    assert res["machine"]["cpu"] and res["machine"]["threads"] >= 1  # the same seed may train differently on another CPU
    assert res["machine"]["cpu_capability"] and res["machine"]["cpu_bf16"] in {"amx", "avx512_bf16", None}
    assert set(res["segmentation"]) == set(ROWS)
    assert set(res["sct"]) == {"cyclegan_plain", "cyclegan_shape", "histmatch"}
    for row in ROWS:
        (s,) = res["segmentation"][row]
        assert s["subject"] == "chaos-t2-02" and set(s["dice"]) == set(cfg.classes) and set(s["hd95_mm"]) == set(cfg.classes)
    md = (tmp_path / "b/table.md").read_text()
    for row in ("no adaptation", "plain CycleGAN", "shape-consistent", "ADDA", "CyCADA", "self-training", "supervised", "histogram matching"):
        assert row in md
    assert "chaos-t2-02" in md and "chaos-t2-01" not in md.split("test")[-1].split("\n")[0]
    lines = (tmp_path / "b/table.csv").read_text().splitlines()
    assert lines[0] == "table,row,organ,metric,mean,std,n" and len(lines) == 1 + 2 * len(ROWS) * 4 * 2 + 3 * 4 * 3
    # across protocols: every row scored on the TotalSegmentator MR (another protocol, never trained on)
    cross = res["cross_protocol"]["TotalSegmentator MR"]
    assert set(cross) == set(ROWS) and all(s[0]["subject"] == "ts-mr-01" for s in cross.values())
    assert "## Across protocols: TotalSegmentator MR (ts-mr-01" in md
    assert " ± " not in md.split("## Across protocols")[1].split("\n## ")[0]  # one subject: no spread to show
    from medgan.pipelines.benchmark.run import rescore_cross_protocol

    again = rescore_cross_protocol(cfg)  # no training: the stored checkpoints, the same scores
    # (compared as JSON: an empty prediction's HD95 is NaN, and NaN != NaN)
    assert json.dumps(again["cross_protocol"]["TotalSegmentator MR"]) == json.dumps(cross)
    with pytest.raises(ValueError, match="another config"):
        rescore_cross_protocol(cfg.model_copy(update={"iters": 3}))
    # the CycleGAN rows: 2 joint iterations (a checkpoint of the segmenters before fine-tuning), then 2 fine-tuning ones
    for row in ("cyclegan_plain", "cyclegan_shape"):
        assert sorted(p.name for p in (tmp_path / "b" / row / "checkpoints").iterdir()) == ["iter_000002", "iter_000004"]
    # pseudo-labels only for the training MR; the test subject entered no training step
    for row in ("self_training", "self_training_plain"):
        assert [p.name for p in (tmp_path / "b" / row / "pseudo").iterdir()] == ["chaos-t2-01_pseudo.nii.gz"]
    assert "plain CycleGAN + pseudo-label self-training" in md
    # chaos.yaml scores each organ's largest connected component; the pseudo-labels stay as S_MR predicts them
    assert cfg.largest_component
    from medgan.io import read_volume
    from medgan.pipelines.benchmark.run import row_segmenter

    pseudo = read_volume(tmp_path / "b/self_training/pseudo/chaos-t2-01_pseudo.nii.gz").array
    train_mr = read_volume(DATA_DIR / "abdomen/mr-chaos/chaos-t2-01.nii.gz")
    shape_ckpt = res["checkpoints"]["cyclegan_shape"]
    raw, cut = (row_segmenter(cfg.model_copy(update={"largest_component": on}), "cyclegan_shape", shape_ckpt, {})(train_mr)
                for on in (False, True))
    assert np.array_equal(pseudo, raw)
    # each self-training row is taught by its own CycleGAN row: the plain one by the plain S_MR
    plain_raw = row_segmenter(cfg.model_copy(update={"largest_component": False}), "cyclegan_plain",
                              res["checkpoints"]["cyclegan_plain"], {})(train_mr)
    assert np.array_equal(read_volume(tmp_path / "b/self_training_plain/pseudo/chaos-t2-01_pseudo.nii.gz").array, plain_raw)
    assert not np.array_equal(plain_raw, raw)  # (the two teachers do disagree: the check above can tell them apart)
    # test-time augmentation (the benchmark's tta option): both kinds of model, the input grid, reproducible
    from medgan.pipelines.data_config import SegmentationTTAConfig

    tta_cfg = cfg.model_copy(update={"tta": SegmentationTTAConfig(passes=3)})
    for row in ("cyclegan_shape", "adda"):
        a = row_segmenter(tta_cfg, row, res["checkpoints"][row], {})(train_mr)
        assert a.shape == train_mr.array.shape and np.array_equal(a, row_segmenter(tta_cfg, row, res["checkpoints"][row], {})(train_mr))
    if not np.array_equal(raw, cut):  # the scored map keeps fewer voxels, never others
        assert ((cut == raw) | (cut == 0)).all() and (cut > 0).sum() < (raw > 0).sum()
    for cfg_file in (tmp_path / "b").rglob("checkpoints/*/config.yaml"):
        assert "chaos-t2-02" not in cfg_file.read_text(), cfg_file
    # a rerun reuses a CycleGAN row's final checkpoint of the same config, resumes its fine-tuning
    # from the joint-stage checkpoint when only seg_iters differs, and otherwise trains it again
    import logging

    from medgan.data.datalist import datalist_from_folder
    from medgan.pipelines.benchmark.run import _cyclegan, by_subject, cyclegan_config, reusable_cyclegan

    ct = datalist_from_folder(cfg.source.folder)
    mr = [{"image": by_subject(cfg.target.folder)["chaos-t2-01"]["image"], "label": None}]
    row = tmp_path / "b/cyclegan_shape"
    ckpts = row / "checkpoints"
    assert reusable_cyclegan(cyclegan_config(cfg, ct, mr, row, True)) == (ckpts / "iter_000004", None)
    assert reusable_cyclegan(cyclegan_config(cfg.model_copy(update={"seg_iters": 3}), ct, mr, row, True)) == (None, ckpts / "iter_000002")
    assert reusable_cyclegan(cyclegan_config(cfg.model_copy(update={"iters": 3}), ct, mr, row, True)) == (None, None)
    assert reusable_cyclegan(cyclegan_config(cfg, ct, mr, row, False)) == (None, None)  # the plain row's config differs
    with caplog.at_level(logging.INFO, logger="medgan.pipelines.benchmark.run"):
        assert _cyclegan(cfg.model_copy(update={"seg_iters": 3}), ct, mr, row, True) == ckpts / "iter_000005"
    assert "resuming" in caplog.text


def test_train_all_split_needs_cross_protocol_sets_to_score_on():
    train, test, _ = Split(train_all=True).subjects(CHAOS[:3])
    assert train == sorted(CHAOS[:3]) and test == []
    with pytest.raises(ValueError, match="one of split.file"):
        Split(train_all=True, folds=5)
    reverse = ROOT / "configs/benchmarks/chaos_reverse.yaml"
    with pytest.raises(ValueError, match="no test subject"):
        load_config(BenchmarkConfig, reverse, ["cross_protocol=[]"])
    with pytest.raises(ValueError, match="histmatch_baseline"):
        load_config(BenchmarkConfig, reverse, ["histmatch_baseline=true"])
    # the reverse table is scored on the CHAOS split's test subjects, which no row of it trains on
    cfg = load_config(BenchmarkConfig, reverse)
    split = json.loads((ROOT / "configs/benchmarks/chaos_split.json").read_text())
    assert cfg.cross_protocol[0].subjects == split["test"]


@requires_data
def test_the_source_side_reads_a_dataset_json_pairing_the_whole_ct_with_its_slab_labels(tmp_path):
    ct = DATA_DIR / "abdomen/ct"
    full = tmp_path / "dataset.json"
    full.write_text(json.dumps({"training": [{"image": str(ct / "ts-ct-01-full.nii.gz"), "label": str(ct / "ts-ct-01_labels.nii.gz")}]}))
    cfg = tiny_config(tmp_path, "source.folder=null", f"source.dataset={full}")
    (entry,) = cfg.source.datalist()
    assert entry["image"].endswith("ts-ct-01-full.nii.gz") and entry["label"].endswith("ts-ct-01_labels.nii.gz")
    assert cfg.source.where == full
    with pytest.raises(ValueError, match="one of folder and dataset"):
        tiny_config(tmp_path, f"source.dataset={full}")
    with pytest.raises(ValueError, match="target: give a folder"):
        tiny_config(tmp_path, "target.folder=null", f"target.dataset={full}")


@requires_data
def test_tiny_reverse_benchmark_trains_on_the_other_protocol_and_scores_chaos(tmp_path):
    cfg = load_config(BenchmarkConfig, ROOT / "configs/benchmarks/chaos_reverse.yaml", [
        "rows=[no_adaptation, supervised]", "iters=2", "seg_iters=2",
        "patch_size=[32,32,32]", "seg_features=[4,4,4,8,8,4]", f"output_dir={tmp_path / 'r'}",
        "adda=[network.disc_channels=4, inference.sw_batch_size=4, inference.overlap=0]", "device=cpu"])
    one = cfg.cross_protocol[0].model_copy(update={"subjects": ["chaos-t2-02"]})  # a training subject of chaos.yaml: fine here
    cfg = cfg.model_copy(update={"cross_protocol": [one]})
    from medgan.pipelines.benchmark.run import run_benchmark

    res = run_benchmark(cfg)
    assert res["split"]["train"] == ["ts-mr-01"] and res["split"]["test"] == []
    assert res["segmentation"] == {} and set(res["checkpoints"]) == {"no_adaptation", "supervised"}
    cross = res["cross_protocol"]["CHAOS T2-SPIR test subjects"]
    assert set(cross) == {"no_adaptation", "supervised"} and all([s["subject"] for s in v] == ["chaos-t2-02"] for v in cross.values())
    md = (tmp_path / "r/table.md").read_text()
    assert "no test subject" in md and "## CT -> MR segmentation on the test MR" not in md
    assert "## Across protocols: CHAOS T2-SPIR test subjects (chaos-t2-02;" in md and "| time (s) |" in md
    with pytest.raises(ValueError, match=r"no labelled scan \['chaos-t2-99'\]"):
        from medgan.pipelines.benchmark.run import score_cross_protocol

        score_cross_protocol(cfg.model_copy(update={"cross_protocol": [one.model_copy(update={"subjects": ["chaos-t2-99"]})]}), res)


@requires_data
def test_the_pseudo_labelled_shape_cyclegan_row_learns_from_training_mr_pseudo_labels_only(tmp_path):
    """cyclegan_shape_pseudo (opt-in): the plain S_MR labels the training MR; the shape-consistent
    CycleGAN then trains with those labels on the MR side (both shape terms, S_MR on real MR)."""
    import csv

    from medgan.io import read_volume
    from medgan.pipelines.benchmark.run import row_segmenter, run_benchmark

    cfg = tiny_config(tmp_path, "rows=[cyclegan_plain, cyclegan_shape_pseudo]", "histmatch_baseline=false", "cross_protocol=[]")
    assert "cyclegan_shape_pseudo" not in ROWS  # opt-in: a whole CycleGAN training more
    res = run_benchmark(cfg)
    assert set(res["segmentation"]) == set(res["sct"]) == {"cyclegan_plain", "cyclegan_shape_pseudo"}
    row = tmp_path / "b/cyclegan_shape_pseudo"
    assert [p.name for p in (row / "pseudo").iterdir()] == ["chaos-t2-01_pseudo.nii.gz"]
    train_mr = read_volume(DATA_DIR / "abdomen/mr-chaos/chaos-t2-01.nii.gz")
    plain_raw = row_segmenter(cfg.model_copy(update={"largest_component": False}), "cyclegan_plain",
                              res["checkpoints"]["cyclegan_plain"], {})(train_mr)
    assert np.array_equal(read_volume(row / "pseudo/chaos-t2-01_pseudo.nii.gz").array, plain_raw)
    config = (row / "config.yaml").read_text()
    assert "chaos-t2-01_pseudo.nii.gz" in config and "chaos-t2-02" not in config
    # the MR side has labels now: the MR -> CT shape term and S_MR's real-MR term are in the loss log
    with open(row / "losses.csv") as f:
        columns = next(csv.reader(f))
    assert {"shape_CT2MR", "shape_MR2CT", "S_MR_real"} <= set(columns), columns
    with open(tmp_path / "b/cyclegan_plain/losses.csv") as f:
        assert "S_MR_real" not in next(csv.reader(f))  # (without pseudo-labels it has none: the check can fail)
    assert "shape-consistent CycleGAN on pseudo-labelled MR" in (tmp_path / "b/table.md").read_text()


def _finished_run(tmp_path, name: str, test: list[str], dice: dict, seed: int = 0, fold: int | None = None, **extra):  # noqa: ANN001, ANN202
    """A benchmark output folder as run_benchmark leaves it (benchmark.yaml, results.json), with
    ``dice[row][subject]`` the Dice of every organ; no training, no shared data."""
    from medgan.config import dump_config

    for side in ("ct", "mr"):
        (tmp_path / side).mkdir(exist_ok=True)
    classes = ["liver", "spleen"]
    labels = {"ids": {"liver": [1], "spleen": [2]}}
    split = {"folds": 3, "fold": fold} if fold is not None else {"file": str(tmp_path / "split.json")}
    (tmp_path / "split.json").write_text(json.dumps({"version": 0, "train": ["a"], "test": ["b"]}))
    cfg = BenchmarkConfig.model_validate({
        "classes": classes, "source": {"name": "CT", "folder": str(tmp_path / "ct"), "labels": labels},
        "target": {"name": "MR", "folder": str(tmp_path / "mr"), "labels": labels}, "split": split, "seed": seed,
        "output_dir": str(tmp_path / name), "histmatch_baseline": False, **extra})
    run = tmp_path / name
    run.mkdir()
    (run / "benchmark.yaml").write_text(dump_config(cfg))
    seg = {row: [{"subject": s, "dice": {c: per[s] for c in classes}, "hd95_mm": {c: 10.0 * (1 - per[s]) for c in classes}}
                 for s in test] for row, per in dice.items()}
    (run / "results.json").write_text(json.dumps({"split": {"rule": "x", "train": ["a"], "test": test},
                                                  "source": [], "segmentation": seg, "sct": {}, "seconds": {}}))
    return run


def test_combining_repeats_gives_the_seed_spread_and_folds_pool_their_subjects(tmp_path):
    from medgan.pipelines.benchmark.run import combine_runs

    r0 = _finished_run(tmp_path, "s0", ["x", "y"], {"adda": {"x": 0.2, "y": 0.4}, "supervised": {"x": 0.8, "y": 0.8}}, seed=0)
    r1 = _finished_run(tmp_path, "s1", ["x", "y"], {"adda": {"x": 0.6, "y": 0.8}}, seed=1)
    res = combine_runs([r0, r1], tmp_path / "c")
    assert res["kind"] == "repeats" and res["left_out_rows"] == ["supervised"]
    mean, std, n = res["tables"]["segmentation"]["adda"]["liver"]["dice"]
    assert (mean, std, n) == pytest.approx((0.5, 0.2, 2))  # run means 0.3 and 0.7: mean ± std over the runs
    assert res["mean_dice_per_run"]["adda"] == pytest.approx([0.3, 0.7])
    md = (tmp_path / "c/table.md").read_text()
    assert "0.500 ± 0.200" in md and "0.300, 0.700" in md and "seed 0" in md and "left out: supervised" in md
    assert (tmp_path / "c/table.csv").read_text().startswith("table,row,organ,metric,mean,std,n")
    # folds: disjoint test subjects, pooled (mean ± std over the 3 subjects, not over the 2 folds)
    f0 = _finished_run(tmp_path, "f0", ["x", "y"], {"adda": {"x": 0.2, "y": 0.4}}, fold=0)
    f1 = _finished_run(tmp_path, "f1", ["z"], {"adda": {"z": 0.9}}, fold=1)
    res = combine_runs([f0, f1], tmp_path / "cf")
    assert res["kind"] == "folds"
    assert res["tables"]["segmentation"]["adda"]["spleen"]["dice"] == pytest.approx((0.5, float(np.std([0.2, 0.4, 0.9])), 3))
    # refusals, each naming what is wrong
    with pytest.raises(ValueError, match="two or more"):
        combine_runs([r0], tmp_path / "c1")
    with pytest.raises(ValueError, match="same seed and fold"):
        combine_runs([r0, _finished_run(tmp_path, "s0b", ["x", "y"], {"adda": {"x": 0.2, "y": 0.4}}, seed=0)], tmp_path / "c2")
    with pytest.raises(ValueError, match=r"differs in \['iters'\]"):
        combine_runs([r0, _finished_run(tmp_path, "s2", ["x", "y"], {"adda": {"x": 0.2, "y": 0.4}}, seed=2, iters=7)], tmp_path / "c3")
    with pytest.raises(ValueError, match="overlap without being the same"):
        combine_runs([r0, _finished_run(tmp_path, "s3", ["y", "z"], {"adda": {"y": 0.2, "z": 0.4}}, seed=3)], tmp_path / "c4")
    with pytest.raises(ValueError, match="not a finished benchmark run"):
        combine_runs([r0, tmp_path / "ct"], tmp_path / "c5")
