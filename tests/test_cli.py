"""The medgan command through typer's CliRunner: help, exit codes, messages."""

import numpy as np
from typer.testing import CliRunner

from medgan.pipelines.cli import app
from tests.conftest import PHANTOM, ROOT, TINY, write_nifti_file

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("train", "translate", "evaluate", "demo", "phantom"):
        assert cmd in res.output


def test_train_missing_config():
    res = runner.invoke(app, ["train", "nope.yaml"])
    assert res.exit_code == 2 and "nope.yaml: config file does not exist" in res.output


def test_train_unknown_key():
    res = runner.invoke(app, ["train", str(ROOT / "configs/phantom.yaml"), "train.bogus=1"])
    assert res.exit_code == 2 and "train.bogus" in res.output and "Extra inputs" in res.output


def test_train_one_iteration(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    res = runner.invoke(app, ["train", "configs/phantom.yaml", *TINY, "optim.n_iters=1", f"train.output_dir={tmp_path}"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "checkpoints/iter_000001/weights.safetensors").is_file()
    assert (tmp_path / "losses.csv").read_text().count("\n") == 2


def test_translate_reports_failures_with_exit_code(tmp_path, tiny_checkpoint):
    good = write_nifti_file(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 12), dtype=np.float32), np.eye(4) * 3 + np.diag([0, 0, 0, -2]))
    res = runner.invoke(app, ["translate", str(good), str(tmp_path / "missing.nii.gz"), "-c", str(tiny_checkpoint),
                              "-d", "mr2ct", "-o", str(tmp_path / "out")])
    assert res.exit_code == 1
    assert "1 translated, 1 failed" in res.output and "missing.nii.gz: no such file" in res.output
    assert (tmp_path / "out/good_mr2ct.nii.gz").is_file()


def test_translate_bad_checkpoint(tmp_path):
    res = runner.invoke(app, ["translate", "x.nii.gz", "-c", str(tmp_path), "-d", "mr2ct", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "not a medgan checkpoint" in res.output


def test_translate_bad_direction(tmp_path, tiny_checkpoint):
    res = runner.invoke(app, ["translate", "x.nii.gz", "-c", str(tiny_checkpoint), "-d", "ct2pet", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "unknown direction 'ct2pet'" in res.output


def test_evaluate_prints_table(tmp_path, tiny_checkpoint):
    runner.invoke(app, ["translate", str(PHANTOM / "ct/phantom-ct-01.nii.gz"), "-c", str(tiny_checkpoint), "-d", "ct2mr", "-o", str(tmp_path)])
    res = runner.invoke(app, ["evaluate", str(tmp_path / "phantom-ct-01_ct2mr.nii.gz"), "-c", str(tiny_checkpoint), "-d", "ct2mr",
                              "--source-labels", str(PHANTOM / "ct/phantom-ct-01_labels.nii.gz"), "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert "liver" in res.output and (tmp_path / "ev/evaluation.json").is_file()


def test_evaluate_a_test_set_from_the_command_line(tmp_path, tiny_checkpoint):
    from medgan.pipelines.cyclegan.translate import translate
    from tests.conftest import PHANTOM

    mr = PHANTOM / "mr/phantom-mr-01.nii.gz"
    assert translate(tiny_checkpoint, [mr], tmp_path / "out", "mr2ct").ok
    res = runner.invoke(app, ["evaluate", "--cases", str(tmp_path / "out"), "--reference-dir", str(PHANTOM / "paired"),
                              "-c", str(tiny_checkpoint), "-d", "mr2ct", "-o", str(tmp_path / "ev"), "--device", "cpu"])
    # the paired CT is named phantom-mr-01_ct, not phantom-mr-01: the only case fails, said clearly
    assert res.exit_code == 2 and "every case failed" in res.output and "paired/phantom-mr-01.nii.gz" in res.output
    res = runner.invoke(app, ["evaluate", "--cases", str(tmp_path / "out"), "-o", str(tmp_path / "ev2"), "-c",
                              str(tiny_checkpoint), "-d", "mr2ct", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "dice_mean" in res.output and (tmp_path / "ev2/metrics.json").is_file()


def test_benchmark_combine_prints_the_table_and_refuses_one_run(tmp_path):
    from tests.pipelines.test_benchmark import _finished_run

    r0 = _finished_run(tmp_path, "s0", ["x"], {"adda": {"x": 0.2}}, seed=0)
    r1 = _finished_run(tmp_path, "s1", ["x"], {"adda": {"x": 0.4}}, seed=1)
    res = runner.invoke(app, ["benchmark-combine", str(r0), str(r1), "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "2 repeats of one split" in res.output and "0.300 ± 0.100" in res.output
    res = runner.invoke(app, ["benchmark-combine", str(r0), "-o", str(tmp_path / "c")])
    assert res.exit_code != 0 and "two or more" in res.output
