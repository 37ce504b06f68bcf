"""U-Net segmenters (S_CT, S_MR): MONAI ``BasicUNet`` with non-trainable upsampling.

Forward: ``(B, in_channels, D, H, W)`` in [-1, 1] -> logits ``(B, num_classes, D, H, W)``
(background is channel 0); any spatial size.
"""

from __future__ import annotations

import torch
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


class UNetEncoder(nn.Module):
    """The contracting path of a ``BasicUNet``: ``x (B, C, D, H, W)`` -> features
    ``[x0 (B, f0, D, H, W), x1 (B, f1, D/2, ...), ..., x4 (B, f4, D/16, ...)]`` (levels 0-4)."""

    def __init__(self, unet: BasicUNet) -> None:
        super().__init__()
        self.conv_0, self.down_1, self.down_2, self.down_3, self.down_4 = unet.conv_0, unet.down_1, unet.down_2, unet.down_3, unet.down_4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        return [x0, x1, x2, x3, self.down_4(x3)]


class UNetDecoder(nn.Module):
    """The expanding path and output layer of a ``BasicUNet``: features of levels 0-4 -> logits."""

    def __init__(self, unet: BasicUNet) -> None:
        super().__init__()
        self.upcat_4, self.upcat_3, self.upcat_2, self.upcat_1, self.final_conv = unet.upcat_4, unet.upcat_3, unet.upcat_2, unet.upcat_1, unet.final_conv

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x0, x1, x2, x3, x4 = feats
        u = self.upcat_4(x4, x3)
        u = self.upcat_3(u, x2)
        u = self.upcat_2(u, x1)
        return self.final_conv(self.upcat_1(u, x0))


def build_split_segmenter(
    spatial_dims: int, in_channels: int, num_classes: int, features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
) -> tuple[UNetEncoder, UNetDecoder]:
    """A :func:`build_segmenter` U-Net split into encoder and decoder (ADDA: Tzeng et al. 2017)."""
    unet = build_segmenter(spatial_dims, in_channels, num_classes, features)
    return UNetEncoder(unet), UNetDecoder(unet)
