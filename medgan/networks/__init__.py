"""Networks: generators, discriminators and segmenters for any ``spatial_dims``."""

from medgan.networks.discriminators import PatchDiscriminator
from medgan.networks.generators import ResnetGenerator, UNetGenerator
from medgan.networks.segmenters import build_segmenter

__all__ = ["PatchDiscriminator", "ResnetGenerator", "UNetGenerator", "build_segmenter"]
