"""Networks for any ``spatial_dims``: generators, discriminators, segmenters, GANs, autoencoders."""

from medgan.networks.discriminators import PatchDiscriminator
from medgan.networks.gans import (
    ConditionalDCGANGenerator,
    ConditionalPatchDiscriminator,
    DCGANDiscriminator,
    DCGANGenerator,
    LabelMapGenerator,
    pix2pix_generator_loss,
)
from medgan.networks.generators import ResnetGenerator, UNetGenerator
from medgan.networks.layers import SelfAttention, apply_spectral_norm
from medgan.networks.segmenters import build_segmenter
from medgan.networks.vae import CVAE, VAE, VQVAE, AdversarialAutoencoder, VAEOutput, vae_loss

__all__ = [
    "CVAE", "VAE", "VQVAE", "AdversarialAutoencoder", "ConditionalDCGANGenerator", "ConditionalPatchDiscriminator",
    "DCGANDiscriminator", "DCGANGenerator", "LabelMapGenerator", "PatchDiscriminator", "ResnetGenerator",
    "SelfAttention", "UNetGenerator", "VAEOutput", "apply_spectral_norm", "build_segmenter",
    "pix2pix_generator_loss", "vae_loss",
]
