"""Generic training steps shared by the pipelines (networks and optimizers are passed in)."""

from medgan.training.gan_step import GANStep, aae_step

__all__ = ["GANStep", "aae_step"]
