#!/usr/bin/env bash
# Issue 17's figures on the shared abdominal data (../shared/data/abdomen: one CT, one MR), from the
# repository root: trains ADDA, the CVAE and a 300-iteration CycleGAN, then writes the feature and
# latent views, the truncation curve, a latent walk and the Fréchet distances under runs/inspect/.
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/medgan
O=runs/inspect
$M adda train configs/adda_abdomen.yaml
$M inspect features runs/adda -o $O/adda
$M cvae train configs/cvae_abdomen.yaml
$M inspect features runs/cvae -o $O/cvae
$M cvae truncation -c runs/cvae -o $O/cvae_truncation
$M cvae interpolate -c runs/cvae --labels ../shared/data/abdomen/mr/ts-mr-01_labels.nii.gz --seeds 1 2 --steps 8 -o $O/cvae_slerp.png
$M train configs/abdomen.yaml optim.n_iters=300 train.output_dir=runs/abdomen300
$M inspect features runs/abdomen300 -o $O/cyclegan
$M inspect fid runs/abdomen300 -o $O/fid_cyclegan
$M inspect fid runs/cvae --features runs/abdomen300 -o $O/fid_cvae
