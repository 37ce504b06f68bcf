"""Ablation of the benchmark's post-processing (``largest_component``) on a finished ``medgan
benchmark`` run, without training anything. Not a test.

    .venv/bin/python benchmarks/chaos_postprocess_ablation.py runs/benchmarks/chaos

Scores every segmentation row's checkpoint on the same test subjects with the benchmark's own
scoring (``medgan.pipelines.benchmark.run``), once as the network gives it and once keeping
each organ's largest connected component, and prints a Markdown table: mean Dice and mean HD95
(mm) over the organs, each the mean over the test subjects. The self-training row's model was
trained on pseudo-labels made with the run's own setting; only its scoring changes here. Writes
``postprocess_ablation.md`` and ``.json`` into the run folder.
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
    settings = {"as predicted": False, "largest component": True}
    lines = [f"Run trained with largest_component: {str(cfg.largest_component).lower()}", "",
             "| row | " + " | ".join(f"{s}: mean Dice / HD95 (mm)" for s in settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for row, checkpoint in results["checkpoints"].items():
        made[row], cells = {}, []
        for name, on in settings.items():
            per = _score(row_segmenter(cfg.model_copy(update={"largest_component": on}), row, Path(checkpoint), loaded),
                         test, mapper, cfg.classes)
            made[row][name] = per
            dice = np.mean([_stats([p["dice"][c] for p in per])[0] for c in cfg.classes])
            hd = np.mean([_stats([p["hd95_mm"][c] for p in per])[0] for c in cfg.classes])
            cells.append(f"{dice:.3f} / {hd:.1f}")
        lines.append(f"| {ROW_TITLES[row]} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    write_ablation(args.run, "postprocess_ablation", "\n".join(lines) + "\n", made)


if __name__ == "__main__":
    main()
