"""Paired (pix2pix, regression) against unpaired (CycleGAN) MR -> CT on one registered head pair,
tested on a slab no model saw (issue 18). Not a test.

    .venv/bin/python benchmarks/paired_head.py [--iters 600] [--models pix2pix regression cyclegan]

Data: the Clinical toolbox's FLAIR and CT templates (``../shared/data/head``, one 2 mm grid; Rorden
et al., NeuroImage 2012). The CT is converted from Cormack units to HU with the toolbox's
``clinical_c2h`` formula (:func:`medgan.data.intensity.cormack_to_hu`). The inferior 30% of the
axial slices, in the middle of the volume (so that every scale of SynthRAD's MS-SSIM has mask voxels
in it), is the **test slab**: the training files (``runs/paired_head/data/train``) are the two parts
on either side of it, so no training step sees it. Each model is trained from its YAML config (``configs/paired_head.yaml``,
``model=regression``, ``configs/cyclegan_head.yaml``), translates the whole FLAIR with
``medgan translate``'s code, and is scored with ``medgan evaluate``'s SynthRAD2025 metrics (MAE,
PSNR, MS-SSIM) inside the CT's body mask (HU > -500) restricted to the test slab, and, for
reference, to the training slab. Writes ``runs/paired_head/paired_head.md`` and ``.json``.

It is one subject (a template averaged over many scans): the figures say how the methods compare
on this pair, not how they generalise to other patients.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD = Path(os.environ.get("MEDGAN_DATA_DIR", ROOT.parent / "shared" / "data")) / "head"
OUT = ROOT / "runs" / "paired_head"
HOLDOUT = 0.3


def _save(path: Path, array: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(dtype), affine), str(path))
    return path


def prepare() -> dict:
    """Write the HU CT, the training parts (either side of the central test slab), the test input
    and the scoring masks."""
    from medgan.data.intensity import cormack_to_hu
    from medgan.data.masks import body_mask
    from medgan.io import check_same_grid, read_volume

    flair = read_volume(HEAD / "mr/clinical-flair-template-2mm.nii.gz")
    ct = read_volume(HEAD / "ct/clinical-ct-template-2mm-cormack.nii.gz")
    check_same_grid(ct, flair, "CT template", "the FLAIR template")
    hu = cormack_to_hu(ct.array)
    ornt = nib.orientations.io_orientation(flair.affine)
    axis = int(np.nonzero(ornt[:, 0] == 2)[0][0])  # the voxel axis along S-I
    n = flair.array.shape[axis]
    a = int(round(n * (1 - HOLDOUT) / 2))
    test_idx = np.arange(a, a + int(round(n * HOLDOUT)))  # the central slab
    body = body_mask(hu)
    slab = np.zeros_like(body)
    np.moveaxis(slab, axis, 0)[test_idx] = True
    d = OUT / "data"

    def crop(arr: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        sl = [slice(None)] * 3
        sl[axis] = slice(lo, hi)
        off = np.zeros(3)
        off[axis] = lo
        aff = flair.affine.copy()
        aff[:3, 3] = flair.affine[:3, :3] @ off + flair.affine[:3, 3]
        return arr[tuple(sl)], aff

    pieces = {"a": (0, int(test_idx[0])), "b": (int(test_idx[-1]) + 1, n)}  # both sides of the test slab
    for name, arr in (("mr/flair", flair.array), ("ct/ct", hu), ("mask/mask", body.astype(np.uint8))):
        for piece, (lo, hi) in pieces.items():
            c, aff = crop(arr, lo, hi)
            _save(d / "train" / f"{name}_{piece}.nii.gz", c, aff, np.uint8 if name.startswith("mask") else np.float32)
    paths = {
        "test_input": _save(d / "test/flair.nii.gz", flair.array, flair.affine),
        "reference": _save(d / "reference/flair.nii.gz", hu, flair.affine),
        "mask_test": _save(d / "masks/test_slab.nii.gz", body & slab, flair.affine, np.uint8),
        "mask_train": _save(d / "masks/train_slab.nii.gz", body & ~slab, flair.affine, np.uint8),
    }
    return {"paths": {k: str(v) for k, v in paths.items()}, "axis": axis, "test_slices": [int(test_idx[0]), int(test_idx[-1])],
            "train_slices": [list(v) for v in pieces.values()],
            "n_slices": n, "hu_range": [float(hu.min()), float(hu.max())]}


def train_model(name: str, iters: int) -> tuple[Path, float]:
    from medgan.pipelines.registry import build_trainer

    os.chdir(ROOT)
    cfg = "configs/cyclegan_head.yaml" if name == "cyclegan" else "configs/paired_head.yaml"
    overrides = [f"optim.n_iters={iters}", f"train.output_dir=runs/paired_head/{name}", f"train.checkpoint_every={iters}"]
    if name == "regression":
        overrides.append("model=regression")
    trainer = build_trainer(cfg, overrides, progress=False)
    t0 = time.perf_counter()
    ckpt = trainer.fit()
    return ckpt, (time.perf_counter() - t0) / iters


def score(name: str, ckpt: Path, info: dict) -> dict:
    from medgan.pipelines.cyclegan.evaluate import Case, evaluate_set
    from medgan.pipelines.cyclegan.translate import translate

    p = info["paths"]
    t0 = time.perf_counter()
    rep = translate(ckpt, [p["test_input"]], OUT / name / "translated", "mr2ct")
    if not rep.ok:
        raise RuntimeError(rep.failed)
    t_translate = time.perf_counter() - t0
    sct = OUT / name / "translated" / "flair_mr2ct.nii.gz"
    out = {"translate_s": round(t_translate, 2)}
    for region in ("test", "train"):
        case = Case(f"head_{region}", sct, Path(p["reference"]), Path(p[f"mask_{region}"]), Path(p["test_input"]), None)
        r = evaluate_set([case], OUT / name / f"eval_{region}", figures=region == "test")
        out[region] = r["results"][0]["paired"] if "paired" in r["results"][0] else r["results"][0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--models", nargs="+", default=["pix2pix", "regression", "cyclegan"])
    args = ap.parse_args()
    info = prepare()
    rows = {}
    for m in args.models:
        ckpt, s_per_iter = train_model(m, args.iters)
        rows[m] = {"checkpoint": str(ckpt), "s_per_iter": round(s_per_iter, 3), **score(m, ckpt, info)}
        print(m, json.dumps(rows[m]), flush=True)
    (OUT / "paired_head.json").write_text(json.dumps({"data": info, "iters": args.iters, "models": rows}, indent=2), encoding="utf-8")
    lines = [f"Paired vs unpaired MR -> CT, head templates, {args.iters} iterations each, test slab = the central "
             f"{HOLDOUT:.0%} of the axial slices (slices {info['test_slices'][0]}-{info['test_slices'][1]} of "
             f"{info['n_slices']} along voxel axis {info['axis']}), never in a training file. One subject.", "",
             "| model | test MAE (HU) | test PSNR (dB) | test MS-SSIM | train-slab MAE (HU) | s/iteration | translate (s) |",
             "|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        t, tr = r["test"], r["train"]
        lines.append(f"| {m} | {t['mae_hu']:.1f} | {t['psnr_db']:.2f} | {t['ms_ssim']:.4f} | {tr['mae_hu']:.1f} | "
                     f"{r['s_per_iter']:.3f} | {r['translate_s']:.1f} |")
    (OUT / "paired_head.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
