"""Distributed data parallel with torchrun on CPU (gloo): identical parameters on every rank
after every step, different patches per rank, one checkpoint from rank 0, resume of a 2-rank
checkpoint on 1 rank, and the engine's NaN guard."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from medgan.checkpoint import load_training_state, read_meta
from medgan.training import NonFiniteLossError
from medgan.pipelines.registry import build_trainer
from medgan.utils import read_losses
from tests.conftest import ROOT, TINY, assert_resumed_losses_match
from tests.pipelines.test_adda import TINY as ADDA_TINY
from tests.pipelines.test_adda import phantom_config as adda_config

WORKER = ROOT / "tests/pipelines/ddp_worker.py"
CYCLEGAN = ROOT / "configs/phantom.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config, out, *overrides, n=2):  # noqa: ANN001
    # PYTHONFAULTHANDLER: a rank that aborts (SIGABRT) prints every thread's Python stack first
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(WORKER), str(config), str(out), *overrides]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    # on failure: the first lines of stderr too (a rank's own traceback comes before torchrun's summary)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[:6000] + "\n[...]\n" + res.stderr[-3000:]
    return json.loads((out / "ddp_report.json").read_text())


CG = [*TINY, "optim.n_iters=3", "loss.shape_warmup_iters=0", "train.checkpoint_every=2"]


def test_two_ranks_keep_identical_parameters_and_draw_different_patches(tmp_path):
    report = torchrun(CYCLEGAN, tmp_path, *CG)
    assert report["world_size"] == 2
    assert report["patches"][0] != report["patches"][1]
    assert sorted(report["params"]) == ["1", "2", "3"]
    for it, digests in report["params"].items():
        assert digests[0] == digests[1], f"ranks differ after iteration {it}"
    # rank 0 wrote each checkpoint and each log row once
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]
    assert [r["iteration"] for r in read_losses(tmp_path)] == [1, 2, 3]
    state = load_training_state(tmp_path / "checkpoints/iter_000003")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert read_meta(tmp_path / "checkpoints/iter_000003", "cyclegan")["world_size"] == 2

    # the 2-rank checkpoint resumes on 1 rank (rank 0 takes its own state) and trains on
    tr = build_trainer(CYCLEGAN, [*CG, f"train.output_dir={tmp_path}", "train.device=cpu", "optim.n_iters=5"],
                       resume=tmp_path / "checkpoints/iter_000003", progress=False)
    assert tr.iteration == 3
    tr.fit()
    assert [r["iteration"] for r in read_losses(tmp_path)] == [1, 2, 3, 4, 5]
    assert load_training_state(tmp_path / "checkpoints/iter_000005")["world_size"] == 1


def test_two_rank_resume_continues_exactly(tmp_path):
    ov = [*TINY, "optim.n_iters=4", "loss.shape_warmup_iters=0", "train.pool_size=1"]
    torchrun(CYCLEGAN, tmp_path / "full", *ov)
    torchrun(CYCLEGAN, tmp_path / "part", *ov, "train.checkpoint_every=2")
    shutil.rmtree(tmp_path / "part/checkpoints/iter_000004")
    torchrun(CYCLEGAN, tmp_path / "part", *ov, f"resume={tmp_path / 'part/checkpoints/iter_000002'}")
    assert_resumed_losses_match(tmp_path / "full", tmp_path / "part", 4, 2)


def test_adda_stages_under_two_ranks(tmp_path):
    adda_config(tmp_path)  # writes tmp_path/adda.yaml
    report = torchrun(tmp_path / "adda.yaml", tmp_path / "run", *ADDA_TINY)
    assert sorted(report["params"]) == [str(i) for i in range(1, 7)]  # source, adapt, oracle: 2 each
    for it, digests in report["params"].items():
        assert digests[0] == digests[1], f"ranks differ after iteration {it}"


def test_nan_guard_stops_before_the_update_and_names_the_loss(tmp_path, monkeypatch):
    tr = build_trainer(CYCLEGAN, [*TINY, f"train.output_dir={tmp_path}", "optim.n_iters=4", "train.checkpoint_every=1"],
                       progress=False)
    tr.fit(n_iters=1)
    before = {k: v.clone() for k, v in tr.nets.state_dict().items()}
    l1 = tr.l1
    monkeypatch.setattr(tr, "l1", lambda a, b: l1(a, b) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss cycle_CT=nan.*G update was not applied.*iter_000001"):
        tr.fit()
    after = tr.nets.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a network changed although its loss was NaN"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000001"]


def test_train_command_picks_the_pipeline_from_the_config(tmp_path):
    from medgan.pipelines.registry import pipeline_of

    assert pipeline_of(CYCLEGAN) == "cyclegan"
    assert pipeline_of(ROOT / "configs/adda_abdomen.yaml") == "adda"
    assert pipeline_of(ROOT / "configs/cvae_abdomen.yaml") == "cvae"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pipeline": "stylegan"}))
    with pytest.raises(ValueError, match="bad.yaml: pipeline 'stylegan' is not one of"):
        pipeline_of(bad)
