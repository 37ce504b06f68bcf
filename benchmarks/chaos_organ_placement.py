"""Where a finished benchmark row's organs lie against the truth, per test subject: predicted and
true volume (ml), precision, recall, and the centroid shift (mm, along the scan's voxel axes), with
the benchmark's own segmenter and post-processing (``row_segmenter``). Read-only: it scores stored
checkpoints. Not a test.

    .venv/bin/python benchmarks/chaos_organ_placement.py runs/benchmarks/chaos cyclegan_plain
    .venv/bin/python benchmarks/chaos_organ_placement.py runs/benchmarks/chaos no_adaptation --checkpoint-of adda

About 10 s per test subject on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medgan.io import read_label_map, read_volume, strip_image_suffix
from medgan.pipelines.benchmark.run import ROW_ENCODER, load_run, row_segmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output_dir of a finished benchmark (results.json, benchmark.yaml)")
    ap.add_argument("row", choices=sorted(ROW_ENCODER), help="the row whose segmenter is placed")
    ap.add_argument("--checkpoint-of", help="the row whose checkpoint holds it (no_adaptation: adda); default the row")
    args = ap.parse_args()
    cfg, results, test, mapper = load_run(args.run)
    segment = row_segmenter(cfg, args.row, Path(results["checkpoints"][args.checkpoint_of or args.row]), {})
    print("subject | organ | volume predicted / true (ml) | precision | recall | centroid shift (mm, voxel axes i, j, k)")
    for e in test:
        vol = read_volume(e["image"])
        raw = read_label_map(e["label"], vol)
        truth, pred = mapper(raw.array, raw.path), segment(vol)
        spacing = np.asarray(vol.spacing_mm)
        ml = float(np.prod(spacing)) / 1000
        for i, c in enumerate(cfg.classes, start=1):
            t, p = truth == i, pred == i
            both = int((t & p).sum())
            shift = (np.argwhere(p).mean(0) - np.argwhere(t).mean(0)) * spacing if t.any() and p.any() else None
            print(f"{strip_image_suffix(Path(e['image']))} | {c} | {p.sum() * ml:.0f} / {t.sum() * ml:.0f} | "
                  f"{both / max(int(p.sum()), 1):.2f} | {both / max(int(t.sum()), 1):.2f} | "
                  f"{'-' if shift is None else np.round(shift).astype(int).tolist()}")


if __name__ == "__main__":
    main()
