"""Voxel-wise losses of paired translation: masked L1 and a segmentation-feature perception loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over the voxels where ``mask`` is set (all voxels when ``None``).

    ``pred``, ``target`` ``(B, C, D, H, W)``; ``mask`` ``(B, 1, D, H, W)`` (0/1, broadcast over
    channels). Voxels outside the mask contribute neither to the sum nor to the count, so the
    loss of a patch does not depend on how much air it holds (SynthRAD2025 scores inside the
    mask too). An empty mask gives 0 (with a gradient path), not NaN.
    """
    err = (pred.float() - target.float()).abs()
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype).expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


class SegmentationPerceptionLoss(nn.Module):
    """Anatomical perception loss: masked L1 between a frozen CT segmenter's encoder features of
    the synthetic CT and of the real CT, averaged over the chosen U-Net levels, the mask
    max-pooled to each level (as nnsyn / IMPACT-Synth use a segmenter's features; the idea of
    Johnson et al., ECCV 2016, with a medical network in place of VGG).

    Args:
        encoder: ``x (B, 1, D, H, W)`` -> list of features per level (e.g.
            :class:`medgan.networks.segmenters.UNetEncoder`); frozen here (no gradient to its
            weights, eval mode).
        levels: which levels' features to compare.
    """

    def __init__(self, encoder: nn.Module, levels: tuple[int, ...] = (0, 1, 2, 3)) -> None:
        super().__init__()
        self.encoder, self.levels = encoder.eval(), tuple(levels)
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> SegmentationPerceptionLoss:  # the encoder stays in eval mode
        return self

    def forward(self, sct: torch.Tensor, ct: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        fs, fc = self.encoder(sct), self.encoder(ct)
        terms = []
        for lvl in self.levels:
            a, b = fs[lvl], fc[lvl].detach()
            m = None if mask is None else F.adaptive_max_pool3d(mask.float(), a.shape[2:])
            terms.append(masked_l1(a, b, m))
        return torch.stack(terms).mean()
