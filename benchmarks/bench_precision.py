"""How far bfloat16 autocast moves a synthetic CT from the float32 one (same model, same scan).

    python benchmarks/bench_precision.py CHECKPOINT MR.nii.gz [MR2.nii.gz ...]

Prints, per scan, the largest and mean absolute difference in HU inside the sCT's body
(HU > -500) between ``inference.precision`` float32 and bfloat16 (autocast on this machine's
device: CPU here; the same bfloat16 rounding as on CUDA, not the same kernels)."""

from __future__ import annotations

import sys

import numpy as np

from medgan.io import read_volume
from medgan.pipelines.cyclegan.translate import Translator


def main(checkpoint: str, scans: list[str]) -> None:
    tr = Translator(checkpoint)
    for scan in scans:
        vol = read_volume(scan)
        out = {}
        for precision in ("float32", "bfloat16"):
            tr.config.inference.precision = precision
            out[precision] = tr.translate_volume(vol, "mr2ct").image
        body = out["float32"] > -500
        d = np.abs(out["bfloat16"] - out["float32"])[body]
        print(f"{scan}: bfloat16 vs float32 in the body ({body.sum()} voxels): max {d.max():.1f} HU, mean {d.mean():.2f} HU, "
              f"99th percentile {np.percentile(d, 99):.1f} HU")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
