"""CycleGAN generator forward time per sliding window on CPU: medgan's layers against the
textbook ones (nn.Upsample + nn.Conv3d, plain one-channel output convolution, nn.InstanceNorm3d)
with the same weights (not a test).

    .venv/bin/python benchmarks/bench_generator.py [--roi 64 64 32] [--repeats 10]

Prints the median time per window for 1 and 2 torch threads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgan.inference import reuse_freed_memory  # noqa: E402
from medgan.networks import ResnetGenerator  # noqa: E402
from tests.networks.test_networks import _plain_generator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--roi", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    reuse_freed_memory()
    torch.manual_seed(0)
    fast = ResnetGenerator(3, 1, 1, ngf=16, n_res_blocks=6).eval()
    textbook = _plain_generator(fast)
    x = torch.randn(1, 1, *args.roi)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, net in (("textbook", textbook), ("medgan", fast)):
            with torch.inference_mode():
                net(x)
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    net(x)
                    times.append(time.perf_counter() - t0)
            print(f"threads {threads} {name:9s} median {1000 * sorted(times)[len(times) // 2]:.1f} ms per window of {args.roi}")


if __name__ == "__main__":
    main()
