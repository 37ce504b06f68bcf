"""Dice + cross-entropy on the labelled members of a batch (shape-consistency term)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch import nn


class MaskedDiceCELoss(nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot targets) over the batch members with labels.

    Used for the shape-consistency loss of Zhang, Yang & Zheng, CVPR 2018 (arXiv 1802.09655),
    Eq. 4: ``L_shape = E[-sum y log S_B(G_A2B(x_A))]`` (cross-entropy, here plus Dice).

    Forward: ``logits (B, K, D, H, W)``, ``target (B, 1, D, H, W)`` int class indices,
    ``mask (B,)`` bool -> scalar; ``None`` when no batch member is labelled (nothing to learn).
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        if not bool(mask.any()):
            return None
        return self.loss(logits[mask].float(), target[mask])
