"""Loss modules (never read a config; weights are applied by the trainers)."""

from medgan.losses.adversarial import (
    GAN_MODES,
    AdversarialLoss,
    build_adversarial_loss,
    clip_weights,
    gradient_penalty,
    r1_penalty,
)
from medgan.losses.divergences import ClassMeanLoss, MMDLoss, class_sums, kl_normal, mmd2
from medgan.losses.regression import SegmentationPerceptionLoss, masked_l1
from medgan.losses.segmentation import MaskedDiceCELoss

__all__ = ["GAN_MODES", "AdversarialLoss", "ClassMeanLoss", "MMDLoss", "MaskedDiceCELoss", "SegmentationPerceptionLoss", "build_adversarial_loss", "class_sums", "clip_weights",
           "gradient_penalty", "kl_normal", "masked_l1", "mmd2", "r1_penalty"]
