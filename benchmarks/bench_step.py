"""Training-step speed of the CycleGAN, option by option, next to the machine's conv ceiling and
ganslate's 3D CycleGAN step (not a test).

    .venv/bin/python benchmarks/bench_step.py [--iters 8] [--nets benchmark|demo] [--compile] [--curves 150] [--json out.json]

1. **conv ceiling**: GFLOP/s of a dense Conv3d(64, 64, 3) forward + backward on (1, 64, 32, 64, 64),
   float32 and bfloat16 (channels-last), the best this machine does on the step's main operation;
2. **medgan's step** (G, D and S updates; the benchmark networks of bench_cyclegan.py; patch
   64x64x32 voxels; batch 1; phantom data; ``--nets demo``: the demo's own small networks and
   48x48x32 patch, ``configs/phantom.yaml`` as it is) with each option of ``train`` (amp = bfloat16 autocast,
   channels_last; ``--compile`` also tries torch.compile): seconds per iteration (median after 2 warm-up iterations), FLOPs per
   iteration counted with ``torch.utils.flop_counter.FlopCounterMode``, achieved GFLOP/s;
   "0.2 default" is the step medgan 0.2 ran on CPU (float32, contiguous);
3. **reference**: ``../shared/bench/ref_cyclegan3d.py`` (ganslate's 3D CycleGAN compute, float32)
   on a patch of the same size, its own s/iteration and GFLOP/s;
4. ``--curves N``: the demo config trained N iterations in float32 and with the new defaults, and
   float32 with another seed (the run-to-run noise), losses plotted to ``bench_step_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NETS = ["network.ngf=16", "network.n_res_blocks=6", "network.ndf=32", "network.d_layers=3",
        "network.seg_features=[16,16,32,64,128,16]", "train.patch_size=[64,64,32]", "train.pool_size=50", "train.spacing_mm=[3,3,3]",
        "optim.seg_pretrain_iters=0"]
DEMO_NETS = ["optim.seg_pretrain_iters=0"]  # configs/phantom.yaml's own networks and patch
VARIANTS = {
    "0.2 default (float32, contiguous)": ["train.amp=false", "train.channels_last=false"],
    "channels_last": ["train.amp=false", "train.channels_last=true"],
    "amp (bfloat16, the 0.3 default)": ["train.amp=true", "train.channels_last=false"],
    "amp + channels_last": ["train.amp=true", "train.channels_last=true"],
}


def conv_ceiling(reps: int = 5) -> dict:
    conv = torch.nn.Conv3d(64, 64, 3, padding=1)
    out = {}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        net = conv.to(memory_format=torch.channels_last_3d)
        x = torch.randn(1, 64, 32, 64, 64).to(memory_format=torch.channels_last_3d).requires_grad_()

        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                y = net(x)
            y.float().sum().backward()

        fc = FlopCounterMode(display=False)
        with fc:
            run()
        run()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
        out[name] = {"gflops_per_s": fc.get_total_flops() / min(ts) / 1e9, "s": min(ts)}
    return out


def timed_steps(tr, n: int) -> list[float]:  # noqa: ANN001 - a CycleGANTrainer
    """Seconds of each of ``n`` training steps (G, D and S updates), batches drawn outside the timing."""
    times = []
    for it in range(1, n + 1):
        tr.iteration = it
        a, b = tr.batch(tr.names.a, it), tr.batch(tr.names.b, it)
        t0 = time.perf_counter()
        tr.train_step(a, b)
        times.append(time.perf_counter() - t0)
    return times


def bench_variant(overrides: list[str], iters: int, out: Path, nets: list[str] = NETS) -> dict:
    from medgan.config import load_config
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.trainer import CycleGANTrainer

    cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml",
                      [*nets, *overrides, f"train.output_dir={out}", f"optim.n_iters={iters + 3}", "loss.shape_warmup_iters=0"])
    tr = CycleGANTrainer(cfg, progress=False)
    times = timed_steps(tr, iters + 2)
    t_first = times[0]
    tr.iteration = iters + 3
    a, b = tr.batch("CT", 1), tr.batch("MR", 1)
    fc = FlopCounterMode(display=False)
    with fc:
        tr.train_step(a, b)
    s = statistics.median(times[2:])
    return {"s_per_iter": s, "first_iter_s": t_first, "flops_per_iter": fc.get_total_flops(),
            "gflops_per_s": fc.get_total_flops() / s / 1e9, "amp_dtype": str(tr.amp_dtype)}


def bench_compile(out: Path) -> dict:
    """torch.compile on the amp step's networks (not a config option: see the result)."""
    from medgan.config import load_config
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.trainer import CycleGANTrainer

    cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml", [*NETS, f"train.output_dir={out}", "optim.n_iters=8"])
    tr = CycleGANTrainer(cfg, progress=False)
    for net in tr.nets.values():
        net.compile()
    try:
        times = timed_steps(tr, 5)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        return {"failed": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    return {"s_per_iter": statistics.median(times[2:]), "first_iter_s": times[0]}


def bench_reference(iters: int, ref: Path) -> dict | None:
    if not ref.is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        js = Path(tmp) / "ref.json"
        subprocess.run([sys.executable, str(ref), "--patch", "32", "64", "64", "--iters", str(iters), "--warmup", "2",
                        "--flops", "--json", str(js)], check=True, capture_output=True, text=True)
        r = json.loads(js.read_text(encoding="utf-8"))
    return {"s_per_iter": r["iter_s_median"], "flops_per_iter": r["flops_per_iter"], "gflops_per_s": r["achieved_GFLOPs"],
            "params": r["params"]}


def curves(n: int, out: Path) -> dict:
    """Demo config, n iterations: float32 (seed 0 and 1) and the 0.3 default (seed 0)."""
    from medgan.config import load_config
    from medgan.utils import read_losses
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.trainer import CycleGANTrainer

    runs = {"float32 seed 0": ["train.amp=false", "train.seed=0"],
            "float32 seed 1": ["train.amp=false", "train.seed=1"],
            "amp (bfloat16) seed 0": ["train.amp=true", "train.seed=0"]}
    losses, walls = {}, {}
    for name, ov in runs.items():
        run = out / name.replace(" ", "_").replace("+", "")
        cfg = load_config(CycleGANConfig, ROOT / "configs/phantom.yaml",
                          [*ov, f"train.output_dir={run}", f"optim.n_iters={n}", "train.png_every=100000", f"train.checkpoint_every={n}"])
        t0 = time.perf_counter()
        CycleGANTrainer(cfg, progress=False).fit()
        walls[name] = time.perf_counter() - t0
        losses[name] = read_losses(run)
    keys = ["G_total", "cycle_CT", "cycle_MR", "D_CT", "D_MR", "S_CT_real", "S_MR_real"]

    def tail_mean(rows: list[dict], k: str) -> float:
        vals = [r[k] for r in rows[-max(10, n // 5):] if k in r]
        return sum(vals) / len(vals)

    summary = {name: {k: tail_mean(rows, k) for k in keys} for name, rows in losses.items()}
    summary["wall_s"] = walls
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(axes, keys):
        for name, rows in losses.items():
            xs = [r["iteration"] for r in rows if k in r]
            ys = [r[k] for r in rows if k in r]
            w = 10
            sm = [sum(ys[max(0, i - w + 1):i + 1]) / len(ys[max(0, i - w + 1):i + 1]) for i in range(len(ys))]
            ax.plot(xs, sm, label=name, lw=1)
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    png = ROOT / "benchmarks" / "bench_step_curves.png"
    fig.savefig(png, dpi=90)
    summary["figure"] = str(png.relative_to(ROOT))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--nets", choices=["benchmark", "demo"], default="benchmark",
                    help="the benchmark's networks on a 64x64x32 patch, or configs/phantom.yaml's own (the demo)")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile on the networks")
    ap.add_argument("--curves", type=int, default=0, help="iterations of the learning-curve comparison (0: skip)")
    ap.add_argument("--ref", default=str(ROOT.parent / "shared/bench/ref_cyclegan3d.py"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.chdir(ROOT)
    res = {"nets": args.nets, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx": torch.cpu._is_amx_tile_supported()}
    res["conv_ceiling"] = conv_ceiling()
    print(json.dumps(res, indent=1), flush=True)
    variants = dict(VARIANTS)
    res["medgan"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, ov in variants.items():
            res["medgan"][name] = bench_variant(ov, args.iters, Path(tmp) / str(len(res["medgan"])),
                                                NETS if args.nets == "benchmark" else DEMO_NETS)
            print(name, json.dumps(res["medgan"][name]), flush=True)
        if args.compile:
            res["compile"] = bench_compile(Path(tmp) / "compile")
            print("compile", json.dumps(res["compile"]), flush=True)
        res["reference_ganslate_step"] = bench_reference(args.iters, Path(args.ref))
        print("reference", json.dumps(res["reference_ganslate_step"]), flush=True)
        if args.curves:
            res["curves"] = curves(args.curves, Path(tmp) / "curves")
            print(json.dumps(res["curves"], indent=1), flush=True)
    base = res["medgan"]["0.2 default (float32, contiguous)"]["s_per_iter"]
    print("\n| step | s/iteration | speed-up | GFLOP/iteration | GFLOP/s | % of conv ceiling |")
    print("|---|---|---|---|---|---|")
    for name, r in [*res["medgan"].items(), *([("ganslate reference (float32)", res["reference_ganslate_step"])] if res["reference_ganslate_step"] else [])]:
        ceil = res["conv_ceiling"]["bfloat16" if "amp" in name else "float32"]["gflops_per_s"]
        print(f"| {name} | {r['s_per_iter']:.3f} | {base / r['s_per_iter']:.2f}x | {r['flops_per_iter'] / 1e9:.1f} | "
              f"{r['gflops_per_s']:.1f} | {100 * r['gflops_per_s'] / ceil:.0f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
