"""A self-training row alone from a finished ``medgan benchmark`` run: pseudo-labels of its training
MRs by the segmenter of one of its rows (``--teacher``: ``cyclegan_shape``, the benchmark's
``self_training`` row; ``cyclegan_plain``, its ``self_training_plain`` row; or a self-training row,
for a second round), the segmenter trained on them, scored on its test subjects with the
benchmark's own code (``train_self_training``, ``_score``). Not a test.

    .venv/bin/python benchmarks/chaos_self_training_row.py runs/benchmarks/chaos /tmp/st [--teacher cyclegan_plain]

About 10 minutes on 2 CPU cores (1800 segmenter iterations) instead of retraining the teacher.
Prints Dice / HD95 (mm) per organ, mean ± std over the test subjects, and writes
``self_training_row.json`` into the output folder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medgan.io import atomic_write_text
from medgan.pipelines.benchmark.run import ROW_ENCODER, _score, _stats, by_subject, load_run, row_segmenter, train_self_training


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output_dir of a finished benchmark (results.json, benchmark.yaml)")
    ap.add_argument("output", type=Path, help="folder for the pseudo-labels and the new checkpoint")
    ap.add_argument("--teacher", choices=sorted(ROW_ENCODER), default="cyclegan_shape",
                    help="the row of the run whose segmenter makes the pseudo-labels")
    args = ap.parse_args()
    cfg, results, test, mapper = load_run(args.run)
    cfg = cfg.model_copy(update={"output_dir": args.output})
    target = by_subject(cfg.target.folder)
    unlabelled = [{"image": target[s]["image"], "label": None} for s in results["split"]["train"]]
    t0 = time.perf_counter()
    if args.teacher not in results["checkpoints"]:
        raise SystemExit(f"{args.run}: no {args.teacher} row in this run")
    ckpt = train_self_training(cfg, cfg.source.datalist(), unlabelled, args.teacher,
                               Path(results["checkpoints"][args.teacher]), args.output, {})
    seconds = round(time.perf_counter() - t0, 1)
    per = _score(row_segmenter(cfg, "self_training", ckpt, {}), test, mapper, cfg.classes)
    dice = {c: _stats([p["dice"][c] for p in per]) for c in cfg.classes}
    hd = {c: _stats([p["hd95_mm"][c] for p in per]) for c in cfg.classes}
    for c in cfg.classes:
        print(f"{c}: {dice[c][0]:.3f} ± {dice[c][1]:.3f} / {hd[c][0]:.1f} ± {hd[c][1]:.1f}")
    print(f"mean Dice {np.mean([d[0] for d in dice.values()]):.3f}, mean HD95 {np.mean([h[0] for h in hd.values()]):.1f} mm, "
          f"training {seconds} s (largest_component: {str(cfg.largest_component).lower()})")
    atomic_write_text(args.output / "self_training_row.json",
                      json.dumps({"teacher": args.teacher, "checkpoint": str(ckpt), "seconds": seconds, "scores": per}, indent=2))


if __name__ == "__main__":
    main()
