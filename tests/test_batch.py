"""Batch translation: kill and resume, bad-input corpus, DICOM series selection, sharding."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medgan.batch import Manifest, plan_jobs
from medgan.io import read_volume, sha256_of
from medgan.pipelines.cyclegan.translate import translate
from tests.conftest import ROOT, write_dicom_series, write_nifti_file

AFF = np.diag([3.0, 3.0, 3.0, 1.0])


def _scan(path: Path, seed: int, shape=(40, 36, 24)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti_file(path, rng.gamma(2, 100, size=shape).astype(np.float32), AFF)


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "medgan", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume(tmp_path, tiny_checkpoint):
    scans = [_scan(tmp_path / "in" / f"s{i:02d}.nii.gz", i, shape=(60, 60, 40)) for i in range(8)]
    out = tmp_path / "out"
    args = ["translate", *map(str, scans), "-c", str(tiny_checkpoint), "-d", "mr2ct", "-o", str(out), "--device", "cpu"]
    proc = _cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        done = [r for r in Manifest(out, 0, 1).records().values() if r["status"] == "done"] if out.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch finished before it could be killed: make the scans larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {s for s, r in Manifest(out, 0, 1).records().items() if r["status"] == "done"}
    assert 2 <= len(before) < 8
    finals = [p for p in out.iterdir() if p.name.endswith(".nii.gz") and not p.name.startswith(".")]
    for p in finals:  # every file under a final name is complete
        assert nib.load(str(p)).get_fdata().shape == (60, 60, 40)
    rerun = _cli(*args)
    text, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, text
    assert f"{8 - len(before)} translated, 0 failed, {len(before)} already done" in text
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip().startswith("{")]
    done_stems = [r["stem"] for r in lines if r["status"] == "done"]
    assert sorted(done_stems) == sorted(f"s{i:02d}" for i in range(8))  # each scan done exactly once
    assert not [p for p in out.iterdir() if ".partial-" in p.name]
    for r in lines:
        for name, digest in r["sha256"].items():
            from medgan.io import sha256_of

            assert sha256_of(out / name) == digest


def _bad_corpus(tmp: Path) -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    good = _scan(tmp / "good.nii.gz", 0)
    trunc = tmp / "truncated.nii.gz"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti header at all" * 40))
    img = nib.Nifti1Image((np.arange(40 * 36 * 24) % 500).astype(np.int16).reshape(40, 36, 24), AFF)
    img.header["scl_slope"] = np.nan
    nanslope = tmp / "nan_slope.nii.gz"
    nib.save(img, str(nanslope))
    two_d = write_nifti_file(tmp / "two_d.nii.gz", np.ones((40, 36), np.float32), AFF)
    four_d = write_nifti_file(tmp / "four_d.nii.gz", np.ones((10, 10, 10, 3), np.float32), AFF)
    nanvox = np.ones((20, 20, 20), np.float32)
    nanvox[3, 3, 3] = np.nan
    nan_voxels = write_nifti_file(tmp / "nan_voxels.nii.gz", nanvox, AFF)
    vol = (np.random.default_rng(1).random((24, 20, 12)) * 1000).astype(np.int16)
    positions = [2.0 * k for k in range(12)]
    positions = positions[:5] + positions[8:]  # three slices missing
    missing = tmp / "dicom_missing"
    write_dicom_series(missing, vol[:, :, :9], spacing=(1.0, 1.0, 2.0), slice_positions=positions)
    # a header claiming 2048^3 int16 voxels (16 GiB) over a few bytes of data
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(AFF, code=1)
    huge = tmp / "huge.nii"
    huge.write_bytes(hdr.binaryblock + b"\0" * 4 + np.arange(1000, dtype=np.int16).tobytes())
    fifo = tmp / "pipe.nii.gz"  # would block a reader forever
    os.mkfifo(fifo)
    return {"fifo": fifo, "good": good, "truncated": trunc, "corrupt": corrupt, "nan_slope": nanslope, "two_d": two_d,
            "four_d": four_d, "nan_voxels": nan_voxels, "dicom_missing": missing, "huge": huge}


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_bad_input_corpus(tmp_path, tiny_checkpoint):
    files = _bad_corpus(tmp_path / "in")
    peak_before = _peak_rss_mib()
    rep = translate(tiny_checkpoint, [str(p) for p in files.values()], tmp_path / "out", "mr2ct", device="cpu")
    # the 16 GiB volume was refused from its header: the process peak grew by far less than it
    assert _peak_rss_mib() - peak_before < 1024
    expect_fail = {"truncated": "could not be read", "corrupt": "not a NIfTI file", "fifo": "not a regular file", "two_d": "expected a 3D volume",
                   "four_d": "expected a 3D volume", "nan_voxels": "NaN or Inf", "dicom_missing": "missing or duplicated",
                   "huge": "more than the limit"}
    for key, message in expect_fail.items():
        assert message in rep.failed[str(files[key])], (key, rep.failed.get(str(files[key])))
    assert set(rep.written) == {str(files["good"]), str(files["nan_slope"])}
    raw = read_volume(files["nan_slope"]).array  # a NaN slope means raw values, not garbage
    assert raw.max() == 499 and raw.min() == 0
    records = Manifest(tmp_path / "out", 0, 1).records()
    assert {r["status"] for r in records.values()} == {"done", "failed"} and len(records) == 10
    assert all(r["error"] for r in records.values() if r["status"] == "failed")


def test_cli_exit_code_and_unwritable_output(tmp_path, tiny_checkpoint):
    good = _scan(tmp_path / "good.nii.gz", 0)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    p = _cli("translate", str(good), "-c", str(tiny_checkpoint), "-d", "mr2ct", "-o", str(blocker / "out"))
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 2 and "not writable" in text
    p = _cli("translate", str(good), str(tmp_path / "missing.nii.gz"), "-c", str(tiny_checkpoint), "-d", "mr2ct", "-o", str(tmp_path / "o"))
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 1 and "1 translated, 1 failed" in text


def test_dicom_folder_with_two_series(tmp_path):
    vol = (np.random.default_rng(2).random((16, 14, 6)) * 100).astype(np.int16)
    write_dicom_series(tmp_path / "study", vol, series_uid="1.2.3.4.100", description="T1 MPRAGE")
    write_dicom_series(tmp_path / "study", vol[::-1], series_uid="1.2.3.4.200", description="T2 FLAIR")
    jobs = plan_jobs([tmp_path / "study"])
    assert sorted(j.series_uid for j in jobs) == ["1.2.3.4.100", "1.2.3.4.200"]
    assert len({j.stem for j in jobs}) == 2
    only = plan_jobs([tmp_path / "study"], series_description="*flair*")
    assert [j.series_uid for j in only] == ["1.2.3.4.200"]
    v = read_volume(tmp_path / "study", series_uid="1.2.3.4.100")
    np.testing.assert_array_equal(v.array, vol)
    np.testing.assert_allclose(v.spacing_mm, (1.0, 1.0, 2.0))
    assert v.orientation == "LPS"


def test_same_names_from_different_folders_do_not_collide(tmp_path):
    a = _scan(tmp_path / "a" / "ct.nii.gz", 0)
    b = _scan(tmp_path / "b" / "ct.nii.gz", 1)
    stems = [j.stem for j in plan_jobs([a, b])]
    assert len(set(stems)) == 2 and all(s.startswith("ct-") for s in stems)


def test_manifest_entries_outside_the_folder_are_ignored(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere.nii.gz").write_text("x")
    (out / "manifest.jsonl").write_text(json.dumps({"stem": "s", "status": "done", "outputs": ["../elsewhere.nii.gz"]}) + "\n")
    from medgan.batch import ScanJob

    job = ScanJob(tmp_path / "elsewhere.nii.gz", "s")
    (out / "manifest.jsonl").write_text(json.dumps({"stem": "s", "task": "mr2ct", "task_key": "k", "status": "done",
                                                    "outputs": ["../elsewhere.nii.gz"], "input_sha256": sha256_of(job.source),
                                                    "sha256": {"../elsewhere.nii.gz": sha256_of(job.source)},
                                                    "sizes": {"../elsewhere.nii.gz": 1}}) + "\n")
    assert Manifest(out, 0, 1).finished([job], "mr2ct", "k")[0] == set()


def test_two_ranks_give_the_same_outputs_as_one(tmp_path, tiny_checkpoint):
    scans = [str(_scan(tmp_path / "in" / f"s{i}.nii.gz", i)) for i in range(4)]
    base = ["translate", *scans, "-c", str(tiny_checkpoint), "-d", "mr2ct", "--device", "cpu"]
    one = _cli(*base, "-o", str(tmp_path / "one"))
    assert one.wait(timeout=300) == 0, one.stdout.read()
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", "-m", "medgan", *base,
                          "-o", str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stdout + two.stderr
    ranks = {r["stem"]: r["rank"] for f in ("manifest-rank0.jsonl", "manifest-rank1.jsonl")
             for r in map(json.loads, (tmp_path / "two" / f).read_text().splitlines())}
    assert sorted(ranks) == [f"s{i}" for i in range(4)] and set(ranks.values()) == {0, 1}
    for i in range(4):
        a = nib.load(str(tmp_path / "one" / f"s{i}_mr2ct.nii.gz"))
        b = nib.load(str(tmp_path / "two" / f"s{i}_mr2ct.nii.gz"))
        np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=1e-3)
        np.testing.assert_array_equal(a.affine, b.affine)


def test_default_workers_split_the_cores():
    import torch

    from medgan.batch import default_workers

    cores = torch.get_num_threads()
    assert default_workers(torch.device("cpu"), n_scans=100)[:2] == (cores, 1)  # one scan per core
    assert default_workers(torch.device("cpu"), n_scans=1)[:2] == (1, cores)  # one scan gets every core
    assert default_workers(torch.device("cpu"), n_scans=100, workers=1)[:2] == (1, cores)
    assert default_workers(torch.device("cuda"), n_scans=100)[:2] == (1, cores)
    assert default_workers(torch.device("cpu"), n_scans=100)[2] >= 2


def test_batch_leaves_the_callers_gc_as_it_was(tmp_path, tiny_checkpoint):
    """run_batch freezes the GC's objects while it runs; afterwards nothing it froze stays
    frozen, and objects the caller froze itself stay frozen."""
    import gc

    scan = str(_scan(tmp_path / "in" / "s.nii.gz", 0))
    assert gc.get_freeze_count() == 0
    translate(tiny_checkpoint, [scan], tmp_path / "a", "mr2ct", device="cpu")
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        translate(tiny_checkpoint, [scan], tmp_path / "b", "mr2ct", device="cpu")
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def _other_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of ``src`` with one weight changed: another model of the same config."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    t = load_file(str(dst / "weights.safetensors"))
    name = sorted(k for k in t if k.startswith("G_MR2CT") and k.endswith("weight"))[0]
    t[name] = t[name] + 0.01
    save_file(t, str(dst / "weights.safetensors"))
    return dst


def test_resume_redoes_what_was_asked_differently(tmp_path, tiny_checkpoint):
    """A scan counts as done only for the same input content, checkpoint, direction and options,
    with its outputs intact; otherwise it is redone and its outputs replaced."""
    a = _scan(tmp_path / "in" / "a.nii.gz", 0)
    b = _scan(tmp_path / "in" / "b.nii.gz", 1)
    out = tmp_path / "out"

    def run(ckpt=tiny_checkpoint, direction="mr2ct", segment=False):
        return translate(ckpt, [a, b], out, direction, segment=segment, device="cpu")

    first = run()
    assert len(first.written) == 2 and not first.skipped
    assert len(run().skipped) == 2  # the same command: nothing to do
    seg = run(segment=True)  # --segment: redone, with the labels
    assert len(seg.written) == 2 and (out / "a_mr2ct_seg.nii.gz").is_file()
    plain = run()  # without --segment again: redone, the stale labels removed
    assert len(plain.written) == 2 and not (out / "a_mr2ct_seg.nii.gz").exists()
    other = run(ckpt=_other_checkpoint(Path(tiny_checkpoint), tmp_path / "other_ckpt"))
    assert len(other.written) == 2
    assert len(run(direction="ct2mr").written) == 2  # the other direction: its own outputs
    assert (out / "a_mr2ct.nii.gz").is_file() and (out / "a_ct2mr.nii.gz").is_file()
    assert len(run(ckpt=tmp_path / "other_ckpt").skipped) == 2
    _scan(a, 7)  # new content under the same name
    redo = run(ckpt=tmp_path / "other_ckpt")
    assert list(redo.written) == [str(a)] and redo.skipped == [str(b)]
    sidecar = json.loads((out / "a_mr2ct.json").read_text())
    assert sidecar["input_sha256"] == sha256_of(a)
    # an output changed or removed since it was recorded: redone
    data = bytearray((out / "b_mr2ct.nii.gz").read_bytes())
    data[-20] ^= 0xFF
    (out / "b_mr2ct.nii.gz").write_bytes(bytes(data))
    assert list(run(ckpt=tmp_path / "other_ckpt").written) == [str(b)]
    (out / "a_mr2ct.json").unlink()
    assert list(run(ckpt=tmp_path / "other_ckpt").written) == [str(a)]


def test_dicom_folder_with_two_series_counts_two_scans(tmp_path, tiny_checkpoint):
    vol = (np.random.default_rng(2).random((40, 36, 12)) * 500).astype(np.int16)
    write_dicom_series(tmp_path / "study", vol, series_uid="1.2.3.4.100", description="T1")
    write_dicom_series(tmp_path / "study", vol[::-1], series_uid="1.2.3.4.200", description="T2")
    proc = _cli("translate", str(tmp_path / "study"), "-c", str(tiny_checkpoint), "-d", "mr2ct", "-o",
                str(tmp_path / "out"), "--device", "cpu")
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text
    assert "2 translated, 0 failed, 0 already done" in text


def test_loading_a_model_leaves_the_process_allocator_alone(tmp_path, tiny_checkpoint, monkeypatch):
    """Only the batch engine tunes glibc (process-wide): a Translator and translate_file do not."""
    import medgan.batch as batch
    import medgan.inference as inference
    from medgan.pipelines.cyclegan.translate import Translator

    calls = []
    monkeypatch.setattr(batch, "reuse_freed_memory", lambda: calls.append("batch"))
    monkeypatch.setattr(inference, "reuse_freed_memory", lambda: calls.append("inference"))
    tr = Translator(tiny_checkpoint, "cpu")
    scan = _scan(tmp_path / "a.nii.gz", 0)
    tr.translate_volume(read_volume(scan), "mr2ct")
    tr.translate_file(scan, tmp_path / "out", "mr2ct")
    assert calls == []
    translate(tiny_checkpoint, [scan], tmp_path / "out2", "mr2ct", device="cpu")
    assert calls == ["batch"]
