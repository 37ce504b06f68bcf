"""Dice + cross-entropy on the labelled members of a batch (shape-consistency term)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

from medgan.keys import UNLABELLED


class MaskedDiceCELoss(nn.Module):
    """Dice + cross-entropy (softmax, one-hot targets; MONAI ``DiceCELoss``'s sum) over the batch
    members with labels, and within them over the labelled voxels.

    Used for the shape-consistency loss of Zhang, Yang & Zheng, CVPR 2018 (arXiv 1802.09655),
    Eq. 4: ``L_shape = E[-sum y log S_B(G_A2B(x_A))]`` (cross-entropy, here plus Dice).

    Voxels labelled :data:`medgan.keys.UNLABELLED` (outside a partial label map's field of view)
    count in neither term: the loss is the one of the labelled voxels alone. MONAI's ``DiceCELoss``
    takes no ``ignore_index``, so its two terms are composed here from MONAI's ``DiceLoss`` (which
    has one) and torch's ``cross_entropy``; with every voxel labelled the value equals ``DiceCELoss``'s.

    Forward: ``logits (B, K, D, H, W)``, ``target (B, 1, D, H, W)`` int class indices,
    ``mask (B,)`` bool -> scalar; ``None`` when no batch member, or no voxel of them, is labelled
    (nothing to learn).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=UNLABELLED)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        if not bool(mask.any()):
            return None
        logits, target = logits[mask].float(), target[mask]
        if not bool((target != UNLABELLED).any()):
            return None
        ce = nn.functional.cross_entropy(logits, target[:, 0].long(), ignore_index=UNLABELLED)
        return self.dice(logits, target) + ce
