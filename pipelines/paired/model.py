"""Networks of the paired pipeline: ``G_MR2CT`` (U-Net) and, for pix2pix, ``D_CT`` (a conditional
3D PatchGAN on (output, input)), named after the two domains as in the CycleGAN."""

from __future__ import annotations

from torch import nn

from medgan.networks import UNetGenerator
from medgan.networks.gans import ConditionalPatchDiscriminator
from medgan.pipelines.paired.config import PairedConfig

PIPELINE = "paired"


def generator_name(config: PairedConfig) -> str:
    return f"G_{config.source.name}2{config.target.name}"


def discriminator_name(config: PairedConfig) -> str:
    return f"D_{config.target.name}"


def build_networks(config: PairedConfig) -> nn.ModuleDict:
    """``G_<source>2<target>``: MONAI BasicUNet with tanh output, ``(B, 1, D, H, W)`` -> same;
    with ``model: pix2pix`` also ``D_<target>``: ``D(y, x)`` -> patch logits (Isola et al. 2017, sec. 3.2)."""
    n = config.network
    nets = {generator_name(config): UNetGenerator(3, 1, 1, features=n.unet_features)}
    if config.model == "pix2pix":
        nets[discriminator_name(config)] = ConditionalPatchDiscriminator(3, 1, 1, ndf=n.ndf, n_layers=n.d_layers)
    return nn.ModuleDict(nets)
