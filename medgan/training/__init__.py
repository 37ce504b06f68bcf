"""Training: the engine every pipeline runs on (:class:`Trainer`) and generic GAN steps."""

from medgan.training.engine import Distributed, NonFiniteLossError, Trainer, autocast_dtype
from medgan.training.gan_step import GANStep, aae_step

__all__ = ["Distributed", "GANStep", "NonFiniteLossError", "Trainer", "aae_step", "autocast_dtype"]
