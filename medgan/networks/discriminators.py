"""PatchGAN discriminator (Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", CVPR 2017; used by Zhu et al. 2017) for any ``spatial_dims``, built on MONAI's
``PatchDiscriminator``. MONAI's network returns every intermediate feature map; this wrapper
returns only the final patch logits (no activation: the adversarial losses work on raw logits).
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator as _MonaiPatchDiscriminator
from torch import nn


class PatchDiscriminator(nn.Module):
    """Args: ``ndf`` channels of the first layer, ``n_layers`` stride-2 layers (3 = 70^3 receptive
    field as in the paper).

    Forward: ``x (B, in_channels, D, H, W)`` -> logits ``(B, 1, d, h, w)``, one per patch; each
    spatial size must be at least ``2**n_layers * 2``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, ndf: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        self.net = _MonaiPatchDiscriminator(
            spatial_dims=spatial_dims, channels=ndf, in_channels=in_channels, out_channels=1,
            num_layers_d=n_layers, kernel_size=4, norm=("INSTANCE", {"affine": True}), padding=1,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


class FeatureDiscriminator(nn.Module):
    """Domain discriminator on encoder feature maps (ADDA, Tzeng et al. 2017; the paper's
    3-layer MLP on a global feature becomes convolutions for dense features): two 3^3
    convolutions with LeakyReLU 0.2, then a 1^3 convolution to per-position logits.

    Forward: ``(B, in_channels, *spatial)`` -> ``(B, 1, *spatial)`` logits.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: int = 64) -> None:
        super().__init__()
        from monai.networks.layers.factories import Conv

        conv = Conv[Conv.CONV, spatial_dims]
        self.net = nn.Sequential(
            conv(in_channels, channels, 3, padding=1), nn.LeakyReLU(0.2, True),
            conv(channels, channels, 3, padding=1), nn.LeakyReLU(0.2, True),
            conv(channels, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
