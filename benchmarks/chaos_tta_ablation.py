"""Test-time augmentation (TTA) of every segmentation row of a finished ``medgan benchmark`` run,
without training anything. Not a test.

    .venv/bin/python benchmarks/chaos_tta_ablation.py runs/benchmarks/chaos [--passes 8]

Each row's stored checkpoint segments the run's test subjects again with the benchmark's own
scoring (``medgan.pipelines.benchmark.run``: same post-processing, same label mapping), once per
TTA variant (the benchmark's ``tta`` option, :class:`medgan.pipelines.data_config.SegmentationTTAConfig`):
the views drawn from the target's training augmentation, its rotation and scaling (``spatial``),
its contrast perturbations (``intensity``), or both. The row without TTA is the run's own table.
Since every variant scores the same model on the same subjects, the differences are paired: the
training seed's spread between runs does not enter them.

Prints a Markdown table (Dice per organ, mean over the test subjects; the change of mean Dice
against no TTA) and writes ``tta_ablation.md`` and ``.json`` (per-subject scores) into the run
folder, with the seconds each variant took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from medgan.pipelines.benchmark.config import ROW_TITLES
from medgan.pipelines.benchmark.run import _score, _stats, load_run, row_segmenter, write_ablation
from medgan.pipelines.data_config import SegmentationTTAConfig

VARIANTS = {"spatial": {"spatial": True, "intensity": False}, "intensity": {"spatial": False, "intensity": True},
            "spatial + intensity": {"spatial": True, "intensity": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output_dir of a finished benchmark (results.json, benchmark.yaml)")
    ap.add_argument("--passes", type=int, default=8, help="views per scan, the scan itself included (default 8)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = ap.parse_args()
    cfg, results, test, mapper = load_run(args.run)
    if cfg.tta.passes != 1:
        raise SystemExit(f"{args.run}: this run already scored with test-time augmentation ({cfg.tta}); run it without")
    loaded: dict = {}
    made: dict = {}
    for row, ckpt in results["checkpoints"].items():
        if row not in results["segmentation"]:
            continue
        made[row] = {"none": {"scores": results["segmentation"][row]}}
        for name in args.variants:
            tta = SegmentationTTAConfig(passes=args.passes, **VARIANTS[name])
            t0 = time.perf_counter()
            scores = _score(row_segmenter(cfg.model_copy(update={"tta": tta}), row, Path(ckpt), loaded), test, mapper, cfg.classes)
            made[row][name] = {"scores": scores, "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{row} {name}: {np.mean([np.nanmean(list(s['dice'].values())) for s in scores]):.3f}", flush=True)
    lines = [f"Test-time augmentation, {args.passes} views per scan (the scan itself and {args.passes - 1} drawn), "
             f"{len(test)} test subjects: {', '.join(results['split']['test'])}", "",
             "| row | TTA | " + " | ".join(cfg.classes) + " | mean Dice | change | seconds |", "|---" * (len(cfg.classes) + 5) + "|"]
    for row, variants in made.items():
        base = None
        for name, v in variants.items():
            per_class = [_stats([s["dice"][c] for s in v["scores"]])[0] for c in cfg.classes]
            mean = float(np.nanmean(per_class))
            base = mean if base is None else base
            change = "" if name == "none" else f"{mean - base:+.3f}"
            lines.append(f"| {ROW_TITLES.get(row, row)} | {name} | " + " | ".join(f"{d:.3f}" for d in per_class)
                         + f" | {mean:.3f} | {change} | {v.get('seconds', '')} |")
    write_ablation(args.run, "tta_ablation", "\n".join(lines) + "\n", {"passes": args.passes, "rows": made})


if __name__ == "__main__":
    main()
