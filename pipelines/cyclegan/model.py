"""The six networks of the shape-consistent CycleGAN, named after the two domains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medgan.networks import PatchDiscriminator, ResnetGenerator, UNetGenerator, build_segmenter
from medgan.pipelines.cyclegan.config import CycleGANConfig

PIPELINE = "cyclegan"


@dataclass(frozen=True)
class NetNames:
    """Network names for domains ``a`` and ``b``: ``G_CT2MR``, ``G_MR2CT``, ``D_CT``, ``D_MR``, ``S_CT``, ``S_MR``."""

    a: str
    b: str

    @property
    def g_ab(self) -> str:
        return f"G_{self.a}2{self.b}"

    @property
    def g_ba(self) -> str:
        return f"G_{self.b}2{self.a}"

    @property
    def d_a(self) -> str:
        return f"D_{self.a}"

    @property
    def d_b(self) -> str:
        return f"D_{self.b}"

    @property
    def s_a(self) -> str:
        return f"S_{self.a}"

    @property
    def s_b(self) -> str:
        return f"S_{self.b}"

    def generator(self, source: str, target: str) -> str:
        return f"G_{source}2{target}"

    @classmethod
    def of(cls, config: CycleGANConfig) -> NetNames:
        return cls(config.domain_a.name, config.domain_b.name)


def build_generator(config: CycleGANConfig) -> nn.Module:
    n = config.network
    if n.generator == "resnet":
        return ResnetGenerator(3, 1, 1, ngf=n.ngf, n_res_blocks=n.n_res_blocks)
    return UNetGenerator(3, 1, 1, features=n.unet_features)


def build_networks(config: CycleGANConfig) -> nn.ModuleDict:
    """G_A2B, G_B2A (ResNet or U-Net), D_A, D_B (3D PatchGAN) and, when ``classes`` is set,
    S_A, S_B (3D U-Nets with ``len(classes) + 1`` outputs)."""
    names, n = NetNames.of(config), config.network
    nets = {
        names.g_ab: build_generator(config),
        names.g_ba: build_generator(config),
        names.d_a: PatchDiscriminator(3, 1, ndf=n.ndf, n_layers=n.d_layers),
        names.d_b: PatchDiscriminator(3, 1, ndf=n.ndf, n_layers=n.d_layers),
    }
    if config.classes:
        k = len(config.classes) + 1
        nets[names.s_a] = build_segmenter(3, 1, k, n.seg_features)
        nets[names.s_b] = build_segmenter(3, 1, k, n.seg_features)
    return nn.ModuleDict(nets)
