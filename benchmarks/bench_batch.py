"""Batch translation throughput and memory against a naive loop, side by side in one run (not a test).

    .venv/bin/python benchmarks/bench_batch.py [--scans 4] [--shape 512 512 275] [--spacing 0.8 0.8 1.5]

Writes ``--scans`` synthetic CT-sized volumes (int16, gzip NIfTI), makes a CycleGAN checkpoint
with the default generator (ResNet, ngf 16, 6 blocks; weights untrained: speed does not depend
on them), then in two fresh subprocesses translates every scan CT->MR:

- **naive**: one scan after the other: ``read_volume``, preprocessing, MONAI
  ``SlidingWindowInferer`` with its defaults (overlap 0.25, sw_batch_size 1, constant blending)
  under ``torch.no_grad``, back to the input grid, ``write_nifti``;
- **medgan**: ``medgan.batch.run_batch`` (background read/preprocess and write, inference_mode,
  Gaussian blending, overlap 0.25, one window per pass on CPU, outputs written around the page
  cache and hashed as written), with its manifest, checksums and provenance.

Reports scans per minute, voxels per second (input voxels), peak resident memory (MiB) and the
user and system CPU seconds of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAIVE = r"""
import json, sys, time, torch
from pathlib import Path
from bench_batch import peak_rss_mib, cpu_seconds
from monai.inferers import SlidingWindowInferer
from medgan.io import read_volume, write_nifti
from medgan.data.transforms import to_input_grid
from medgan.pipelines.cyclegan.translate import Translator
ckpt, out, scans = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
tr = Translator(ckpt, "cpu")
g = tr.nets[tr.names.g_ab]
inferer = SlidingWindowInferer(roi_size=tr.config.roi_size)  # MONAI defaults otherwise
t0, c0 = time.perf_counter(), cpu_seconds()
for s in scans:
    vol = read_volume(s)
    image, _ = tr.preprocessor("CT").image(vol)
    with torch.no_grad():
        y = inferer(image.as_tensor()[None], g)[0]
    back = tr.scaling["MR"].inverse(to_input_grid(y, image.affine, vol.affine, vol.array.shape, "bilinear")[0])
    write_nifti(out / (Path(s).name.replace(".nii.gz", "_naive.nii.gz")), back.astype("float32"), vol.affine)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), **cpu_seconds(c0)}))
"""

OURS = r"""
import json, sys, time
from bench_batch import peak_rss_mib, cpu_seconds
from medgan.batch import plan_jobs, run_batch
from medgan.pipelines.cyclegan.translate import Translator
ckpt, out, scans = sys.argv[1], sys.argv[2], sys.argv[3:]
tr = Translator(ckpt, "cpu")
t0, c0 = time.perf_counter(), cpu_seconds()
rep = run_batch(tr.task("ct2mr"), plan_jobs(scans), out, prefetch=2)
assert rep.ok, rep.failed
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(), **cpu_seconds(c0)}))
"""


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB), from ``VmHWM``: unlike ``ru_maxrss`` it starts
    afresh at ``exec``, so a child does not report the peak of the benchmark that forked it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(since: dict | None = None) -> dict:
    """CPU time of this process (s), user and system, since an earlier reading: where the cores went."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    since = since or {"cpu_user_s": 0.0, "cpu_sys_s": 0.0}
    return {"cpu_user_s": round(r.ru_utime - since["cpu_user_s"], 2), "cpu_sys_s": round(r.ru_stime - since["cpu_sys_s"], 2)}


def make_scans(folder: Path, n: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[Path]:
    """CT-like volumes: an elliptic body of soft tissue with a bone ring, air outside, noise."""
    from medgan.io import write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r = (i / 0.8) ** 2 + (j / 0.6) ** 2
    sl = np.where(r < 1, 40.0, -1000.0)
    sl[(r > 0.05) & (r < 0.08)] = 700
    aff = np.diag([*spacing, 1.0])
    paths = []
    for k in range(n):
        rng = np.random.default_rng(k)
        vol = np.repeat(sl[:, :, None], shape[2], axis=2) + rng.normal(0, 20, shape)
        paths.append(write_nifti(folder / f"ct{k:02d}.nii.gz", vol.astype(np.int16), aff))
    return paths


def make_checkpoint(folder: Path) -> Path:
    from medgan.config import load_config
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.trainer import CycleGANTrainer

    os.chdir(ROOT)
    cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", [
        "classes=[]", "optim.seg_pretrain_iters=0", "domain_a.labels=null", "domain_b.labels=null", "network.ngf=16", "network.n_res_blocks=6",
        "train.patch_size=[64,64,32]", "train.spacing_mm=[3,3,3]", "inference.overlap=0.25",
        f"train.output_dir={folder}", "optim.n_iters=1",
    ])
    return CycleGANTrainer(cfg, progress=False).save()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 275])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        scans = make_scans(t / "scans", args.scans, tuple(args.shape), tuple(args.spacing))
        ckpt = make_checkpoint(t / "run")
        results = {}
        for name, code in (("naive", NAIVE), ("medgan", OURS), ("naive_again", NAIVE), ("medgan_again", OURS)):
            out = t / name
            out.mkdir()
            os.sync()  # the previous run's outputs are on disk: its writeback does not slow this one
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
            res = subprocess.run([sys.executable, "-c", code, str(ckpt), str(out), *map(str, scans)], cwd=ROOT,
                                 capture_output=True, text=True, env=env)
            if res.returncode:
                raise SystemExit(res.stdout + res.stderr)
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r["scans_per_min"] = 60 * len(scans) / r["seconds"]
            r["voxels_per_s"] = len(scans) * int(np.prod(args.shape)) / r["seconds"]
            results[name] = r
            print(name, json.dumps(r))
        speed = (results["medgan"]["scans_per_min"] + results["medgan_again"]["scans_per_min"]) / (
            results["naive"]["scans_per_min"] + results["naive_again"]["scans_per_min"])
        print(json.dumps({"scans": len(scans), "shape": args.shape, "speedup": round(speed, 3)}))


if __name__ == "__main__":
    main()
