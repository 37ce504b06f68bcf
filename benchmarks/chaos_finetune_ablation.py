"""Ablation of the CycleGAN rows' segmenter fine-tuning (``seg_iters``, ``optim.seg_finetune_iters``)
on a finished ``medgan benchmark`` run, without training anything. Not a test.

    .venv/bin/python benchmarks/chaos_finetune_ablation.py runs/benchmarks/chaos

A CycleGAN row with fine-tuning keeps a checkpoint at the end of its joint iterations (the
segmenters as joint training left them); this scores that checkpoint's S_MR on the same test
subjects with the benchmark's own scoring (``medgan.pipelines.benchmark.run``) and prints a
Markdown table: Dice per organ, mean ± std over the test subjects, joint only against joint +
fine-tuning (the row of the benchmark table). Writes ``finetune_ablation.md`` and ``.json`` into
the run folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medgan.pipelines.benchmark.config import ROW_TITLES
from medgan.pipelines.benchmark.run import _score, _stats, load_run, row_segmenter, write_ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output_dir of a finished benchmark (results.json, benchmark.yaml)")
    args = ap.parse_args()
    cfg, results, test, mapper = load_run(args.run)
    loaded, made = {}, {}
    lines = ["| row | stage | " + " | ".join(cfg.classes) + " | mean Dice |", "|---" * (len(cfg.classes) + 3) + "|"]
    for row in ("cyclegan_plain", "cyclegan_shape"):
        if row not in results["segmentation"]:
            continue
        joint = Path(results["checkpoints"][row]).parent / f"iter_{cfg.iters:06d}"
        if not joint.is_dir():
            raise SystemExit(f"{joint}: no checkpoint at the end of the joint iterations (a run without fine-tuning?)")
        made[row] = {"joint only": _score(row_segmenter(cfg, row, joint, loaded), test, mapper, cfg.classes),
                     "joint + fine-tuning": results["segmentation"][row]}
        for stage, per in made[row].items():
            stats = [_stats([p["dice"][c] for p in per]) for c in cfg.classes]
            lines.append(f"| {ROW_TITLES[row]} | {stage} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s, _ in stats)
                         + f" | {np.mean([m for m, _, _ in stats]):.3f} |")
    write_ablation(args.run, "finetune_ablation", "\n".join(lines) + "\n", made)


if __name__ == "__main__":
    main()
