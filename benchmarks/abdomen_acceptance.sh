#!/usr/bin/env bash
# Issue-2 acceptance on ../shared/data after training (run from the repository root):
#   medgan train configs/abdomen.yaml
#   medgan train configs/abdomen.yaml loss.lambda_shape=0 loss.lambda_seg_fake=0 train.output_dir=runs/abdomen-noshape
#   bash benchmarks/abdomen_acceptance.sh
# Writes runs/acceptance/{shape,noshape,histmatch,head}/ and prints the evaluation tables.
set -euo pipefail
D=${MEDGAN_DATA_DIR:-../shared/data}
A=$D/abdomen
OUT=runs/acceptance
M=.venv/bin/medgan
for run in shape:runs/abdomen noshape:runs/abdomen-noshape; do
  name=${run%%:*}; ckpt=${run#*:}
  $M translate -c "$ckpt" -d mr2ct --segment -o $OUT/$name $A/mr/ts-mr-01.nii.gz
  $M translate -c "$ckpt" -d ct2mr --segment -o $OUT/$name $A/ct/ts-ct-01-full.nii.gz $A/ct/ts-ct-01.nii.gz
  echo "== $name: synthetic CT from ts-mr-01 (S_CT Dice vs MR labels; per-organ HU vs real CT ts-ct-01)"
  $M evaluate $OUT/$name/ts-mr-01_mr2ct.nii.gz -c "$ckpt" -d mr2ct --source-labels $A/mr/ts-mr-01_labels.nii.gz \
     --reference $A/ct/ts-ct-01.nii.gz --reference-labels $A/ct/ts-ct-01_labels.nii.gz -o $OUT/$name/eval_mr2ct
  echo "== $name: synthetic MR from ts-ct-01 (S_MR Dice vs CT labels; per-organ intensities vs real MR)"
  $M evaluate $OUT/$name/ts-ct-01_ct2mr.nii.gz -c "$ckpt" -d ct2mr --source-labels $A/ct/ts-ct-01_labels.nii.gz \
     --reference $A/mr/ts-mr-01.nii.gz --reference-labels $A/mr/ts-mr-01_labels.nii.gz -o $OUT/$name/eval_ct2mr
done
echo "== histogram matching baseline (no learning), judged by the shape model's S_CT"
$M baseline-histmatch $A/mr/ts-mr-01.nii.gz --reference $A/ct/ts-ct-01.nii.gz -o $OUT/histmatch/ts-mr-01_mr2ct.nii.gz
$M evaluate $OUT/histmatch/ts-mr-01_mr2ct.nii.gz -c runs/abdomen -d mr2ct --source-labels $A/mr/ts-mr-01_labels.nii.gz \
   --reference $A/ct/ts-ct-01.nii.gz --reference-labels $A/ct/ts-ct-01_labels.nii.gz -o $OUT/histmatch/eval_mr2ct
echo "== head and other volumes through the abdominal model: every output on its input's grid"
$M translate -c runs/abdomen -d mr2ct -o $OUT/head $D/head/mr/mni2009-t1-template.nii.gz $D/head/mr/adi-t1-memprage.nii.gz \
   $D/head/mr/clinical-flair-template-2mm.nii.gz $D/head/mr/seg3d-t1.nii.gz $D/head/mr/stroke-t1.nii.gz \
   $D/head/mr/pyradiomics-brain1.nrrd $D/head/dicom/adi-t1-memprage
.venv/bin/python - "$OUT/head" <<'PY'
import json, sys
from pathlib import Path
import numpy as np, nibabel as nib
from medgan.io import read_volume
for side in sorted(Path(sys.argv[1]).glob("*_mr2ct.json")):
    meta = json.loads(side.read_text())
    src = read_volume(meta["input"])
    out = nib.load(str(side.parent / (side.stem + ".nii.gz")))
    same = out.shape == src.array.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    print(f"{'same grid' if same else 'GRID DIFFERS'}  {src.orientation}  {src.array.shape}  {Path(meta['input']).name}")
PY
