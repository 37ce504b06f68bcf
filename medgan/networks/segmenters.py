"""U-Net segmenters (S_CT, S_MR): MONAI ``BasicUNet`` with non-trainable upsampling.

Forward: ``(B, in_channels, D, H, W)`` in [-1, 1] -> logits ``(B, num_classes, D, H, W)``
(background is channel 0); any spatial size.
"""

from __future__ import annotations

from monai.networks.nets import BasicUNet
from torch import nn


def build_segmenter(
    spatial_dims: int, in_channels: int, num_classes: int, features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
) -> nn.Module:
    """A MONAI ``BasicUNet`` segmenter with ``num_classes`` output channels."""
    return BasicUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, features=features,
        norm=("instance", {"affine": True}), upsample="nontrainable",
    )
