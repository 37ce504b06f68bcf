"""Speed and memory of the CycleGAN with the default networks (not a test).

    .venv/bin/python benchmarks/bench_cyclegan.py [--data ../shared/data] [--iters 5]

1. seconds per training iteration (G, D and S updates) at patch 64x64x32 voxels (RAS x, y, z:
   32 slices of 64x64, i.e. 32x64x64 DxHxW), batch 1, default networks, on the phantom;
2. translation time and peak resident memory for abdomen/ct/ts-ct-01-full (122x101x112) CT->MR,
   measured in a fresh subprocess (imports and model included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DEFAULTS = ["network.ngf=16", "network.n_res_blocks=6", "network.ndf=32", "network.d_layers=3",
            "network.seg_features=[16,16,32,64,128,16]", "train.patch_size=[64,64,32]", "train.pool_size=50", "train.spacing_mm=[3,3,3]",
            "optim.seg_pretrain_iters=0"]


def bench_training(iters: int, out: Path) -> dict:
    from medgan.config import load_config
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.trainer import CycleGANTrainer

    cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", [*DEFAULTS, f"train.output_dir={out}", f"optim.n_iters={iters + 2}"])
    from bench_step import timed_steps

    tr = CycleGANTrainer(cfg, progress=False)
    times = timed_steps(tr, iters + 2)
    tr.save()
    steady = times[2:]
    return {"s_per_iter_mean": sum(steady) / len(steady), "s_per_iter_min": min(steady), "iters": len(steady),
            "checkpoint": str(tr.out / "checkpoints" / f"iter_{tr.iteration:06d}"), "torch_threads": __import__("torch").get_num_threads()}


def bench_translation(checkpoint: str, volume: Path, out: Path) -> dict:
    code = (
        "import time,json,resource;t0=time.perf_counter();"
        "from medgan.pipelines.cyclegan.translate import Translator;"
        f"tr=Translator({checkpoint!r}, 'cpu');t1=time.perf_counter();"
        f"tr.translate_file({str(volume)!r}, {str(out)!r}, 'ct2mr');t2=time.perf_counter();"
        "print(json.dumps({'load_s':t1-t0,'translate_s':t2-t1,'peak_rss_mib':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("MEDGAN_DATA_DIR", str(ROOT.parent / "shared/data")))
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        train = bench_training(args.iters, Path(tmp) / "run")
        print(json.dumps({"training_patch_64x64x32": train}, indent=2))
        vol = Path(args.data) / "abdomen/ct/ts-ct-01-full.nii.gz"
        if vol.is_file():
            print(json.dumps({"translate_ts-ct-01-full": bench_translation(train["checkpoint"], vol, Path(tmp) / "out")}, indent=2))
        else:
            print(f"skipped translation: {vol} not found")


if __name__ == "__main__":
    main()
