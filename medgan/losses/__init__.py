"""Loss modules (never read a config; weights are applied by the trainers)."""

from medgan.losses.adversarial import GAN_MODES, AdversarialLoss
from medgan.losses.segmentation import MaskedDiceCELoss

__all__ = ["GAN_MODES", "AdversarialLoss", "MaskedDiceCELoss"]
