"""Score finished demo runs on validation phantom subjects, to choose the demo's settings without
looking at its held-out subject. Not a test.

    .venv/bin/python benchmarks/demo_validation.py runs/demo [runs/demo_other ...]

The validation subjects are made here (:func:`medgan.data.phantom.make_phantom_subject`, an MR
and its paired CT each, with phantom seeds that neither the shipped training volumes nor the
held-out subject use: MR 8 / CT 9 and MR 10 / CT 11) and written to ``--data`` (default
``/tmp/medgan_demo_validation``); nothing is shipped. For each run, its final checkpoint
translates each validation MR to CT; printed per subject: S_CT's mean Dice on the sCT against
the MR's labels (the demo's classes) and ``|median sCT HU - median paired CT HU|`` of liver,
spleen and kidneys (:func:`medgan.pipelines.cyclegan.evaluate.evaluate`, as in the demo). Writes
``validation.json`` into each run folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medgan.data.phantom import make_phantom_subject
from medgan.io import write_nifti
from medgan.pipelines.cyclegan.evaluate import evaluate
from medgan.pipelines.cyclegan.translate import Translator, translate

#: (name, MR noise seed, CT noise seed); the anatomy is the MR seed's (geometry_seed)
SUBJECTS = (("val-01", 8, 9), ("val-02", 10, 11))
ORGANS = ("liver", "spleen", "kidney_right", "kidney_left")


def write_subjects(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mr_seed, ct_seed in SUBJECTS:
        for suffix, modality, seed in (("", "mr", mr_seed), ("_ct", "ct", ct_seed)):
            img, lab, aff = make_phantom_subject(modality, seed, orientation="LPS", geometry_seed=mr_seed)
            write_nifti(folder / f"{name}{suffix}.nii.gz", img, aff)
            write_nifti(folder / f"{name}{suffix}_labels.nii.gz", lab, aff)


def final_checkpoint(run: Path) -> Path:
    """The last ``iter_*`` checkpoint of the demo run folder ``run`` (its ``train/`` folder)."""
    found = sorted((run / "train/checkpoints").glob("iter_*"))
    if not found:
        raise SystemExit(f"{run}: no train/checkpoints/iter_* (not a finished demo run)")
    return found[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="output folders of `medgan demo -o DIR`")
    ap.add_argument("--data", type=Path, default=Path("/tmp/medgan_demo_validation"))
    args = ap.parse_args()
    write_subjects(args.data)
    for run in args.runs:
        ckpt = final_checkpoint(run)
        tr = Translator(ckpt)
        out, scores = run / "validation", {}
        for name, _, _ in SUBJECTS:
            rep = translate(ckpt, [args.data / f"{name}.nii.gz"], out, "mr2ct")
            if not rep.ok:
                raise SystemExit(f"{run}: translation failed: {rep.failed}")
            e = evaluate(ckpt, out / f"{name}_mr2ct.nii.gz", "mr2ct", source_labels=args.data / f"{name}_labels.nii.gz",
                         reference=args.data / f"{name}_ct.nii.gz", reference_labels=args.data / f"{name}_ct_labels.nii.gz",
                         translator=tr)
            scores[name] = {"dice_mean": e["dice_mean"], "abs_diff_median_hu": {k: e["intensity"][k]["abs_diff_median"] for k in ORGANS}}
            print(f"{run} {name}: S_CT Dice {e['dice_mean']:.3f}, |d median| "
                  + " / ".join(f"{k} {scores[name]['abs_diff_median_hu'][k]:.1f}" for k in ORGANS) + " HU", flush=True)
        (run / "validation.json").write_text(json.dumps({"checkpoint": str(ckpt), "subjects": scores}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
