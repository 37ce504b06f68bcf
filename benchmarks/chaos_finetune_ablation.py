"""Ablation of the CycleGAN rows' segmenter fine-tuning (``seg_iters``, ``optim.seg_finetune_iters``)
on a finished ``medgan benchmark`` run, without training anything. Not a test.

    .venv/bin/python benchmarks/chaos_finetune_ablation.py runs/benchmarks/chaos

A CycleGAN row with fine-tuning keeps a checkpoint at the end of its joint iterations (the
segmenters as joint training left them); this scores that checkpoint's S_MR on the same test
subjects with the benchmark's own scoring (``medgan.pipelines.benchmark.run``) and prints a
Markdown table: Dice per organ, mean ± std over the test subjects, joint only against joint +
fine-tuning (the row of the benchmark table). Writes ``finetune_ablation.md`` and ``.json`` into
the run folder.

The last column is S_MR's mean Dice on the labelled CT translated to MR (``G_CT2MR(CT)``, scored
against the CT's own labels: the volumes it learnt from). Its distance to the test-MR mean shows
how far translated CT is from real MR for S_MR. With unlabelled MRs, S_MR learns only from
translated CT, and the shape-consistency term (Zhang et al. 2018, Eq. 4) trains G_CT2MR through
that same S_MR. If the two agree on translated volumes that real MRs do not resemble, the
shape-consistent row shows a larger gap than the plain one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medgan.data.labels import keep_largest_components
from medgan.io import read_label_map, read_volume
from medgan.metrics import dice_per_class
from medgan.pipelines.benchmark.config import ROW_TITLES
from medgan.pipelines.benchmark.run import _score, _stats, load_run, row_segmenter, write_ablation
from medgan.pipelines.cyclegan.translate import Translator


def labelled_cts(cfg) -> list[tuple]:  # noqa: ANN001 - BenchmarkConfig
    """``(volume, class-index labels)`` of each labelled source CT, read once for every checkpoint."""
    mapper, cts = cfg.source.labels.mapper(cfg.classes), []
    for e in (e for e in cfg.source.datalist() if e["label"]):
        vol = read_volume(e["image"])
        raw = read_label_map(e["label"], vol)
        cts.append((vol, mapper(raw.array, raw.path)))
    return cts


def translated_ct_dice(cfg, checkpoint: Path, cts: list[tuple], loaded: dict) -> list[dict]:  # noqa: ANN001 - BenchmarkConfig
    """Dice per organ of S_<target>(G_<source>2<target>(CT)) against each labelled CT's labels
    (``cts``: :func:`labelled_cts`), post-processed as the benchmark scores (``largest_component``);
    ``loaded``: the checkpoints already loaded (:func:`row_segmenter`'s cache)."""
    if checkpoint not in loaded:
        loaded[checkpoint] = Translator(checkpoint, cfg.device)
    scores = []
    for vol, truth in cts:
        seg = loaded[checkpoint].translate_volume(vol, f"{cfg.source.name}2{cfg.target.name}", segment=True).labels
        seg = keep_largest_components(seg, len(cfg.classes)) if cfg.largest_component else seg
        scores.append(dice_per_class(seg, truth, cfg.classes))
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="output_dir of a finished benchmark (results.json, benchmark.yaml)")
    args = ap.parse_args()
    cfg, results, test, mapper = load_run(args.run)
    loaded, made, cts = {}, {}, labelled_cts(cfg)
    lines = ["| row | stage | " + " | ".join(cfg.classes) + " | mean Dice | on G_CT2MR(CT): mean Dice |",
             "|---" * (len(cfg.classes) + 4) + "|"]
    for row in ("cyclegan_plain", "cyclegan_shape"):
        if row not in results["segmentation"]:
            continue
        final = Path(results["checkpoints"][row])
        joint = final.parent / f"iter_{cfg.iters:06d}"
        if not joint.is_dir():
            raise SystemExit(f"{joint}: no checkpoint at the end of the joint iterations (a run without fine-tuning?)")
        made[row] = {"joint only": {"test_mr": _score(row_segmenter(cfg, row, joint, loaded), test, mapper, cfg.classes),
                                    "translated_ct": translated_ct_dice(cfg, joint, cts, loaded)},
                     "joint + fine-tuning": {"test_mr": results["segmentation"][row], "translated_ct": translated_ct_dice(cfg, final, cts, loaded)}}
        for stage, per in made[row].items():
            stats = [_stats([p["dice"][c] for p in per["test_mr"]]) for c in cfg.classes]
            fake = np.mean([np.nanmean([d[c] for d in per["translated_ct"]]) for c in cfg.classes])
            lines.append(f"| {ROW_TITLES[row]} | {stage} | " + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s, _ in stats)
                         + f" | {np.mean([m for m, _, _ in stats]):.3f} | {fake:.3f} |")
    write_ablation(args.run, "finetune_ablation", "\n".join(lines) + "\n", made)


if __name__ == "__main__":
    main()
