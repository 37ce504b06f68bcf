"""Adversarial objectives on raw discriminator logits (safe under ``torch.autocast``).

MONAI's ``PatchAdversarialLoss`` applies an activation before its criterion (sigmoid + BCELoss,
tanh for hinge, LeakyReLU for least squares), which is not the textbook objective and is refused
under autocast (PITFALLS.md); these modules implement the equations directly.

Logits may be patch maps ``(B, 1, d, h, w)`` or ``(B, 1)``; the loss is averaged over every
element (``reduction="mean"``) or summed (``"sum"``).
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

GANMode = Literal["lsgan", "minimax", "nonsaturating", "hinge", "wgan"]


class AdversarialLoss(_Loss):
    """``loss(logits, target_is_real, for_discriminator)`` for one of the standard objectives.

    - ``lsgan`` (Mao et al., ICCV 2017, Eq. 9 with a=0, b=c=1): D: ``(D(x)-1)^2 + D(G(z))^2``,
      G: ``(D(G(z))-1)^2`` (each term halved as in the paper).
    - ``minimax`` (Goodfellow et al. 2014, Eq. 1): D: ``-log sigma(D(x)) - log(1-sigma(D(G(z))))``;
      G minimises ``log(1 - sigma(D(G(z))))``.
    - ``nonsaturating`` (Goodfellow et al. 2014, sec. 3): D as minimax; G: ``-log sigma(D(G(z)))``.
    - ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D: ``relu(1-D(x)) + relu(1+D(G(z)))``, G: ``-D(G(z))``.
    - ``wgan`` (Arjovsky et al. 2017): critic: ``-D(x) + D(G(z))``, G: ``-D(G(z))``.

    ``log sigma`` is computed as ``-softplus(-x)`` (stable, autocast-safe).
    """

    def __init__(self, mode: GANMode = "lsgan", reduction: Literal["mean", "sum"] = "mean") -> None:
        if mode not in GAN_MODES:
            close = difflib.get_close_matches(str(mode), GAN_MODES, n=1)
            raise ValueError(f"unknown GAN mode {mode!r}; choose from {GAN_MODES}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        super().__init__(reduction=reduction)
        self.mode = mode

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean() if self.reduction == "mean" else x.sum()

    def forward(self, logits: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        x = logits.float()
        m = self.mode
        if m == "lsgan":
            return self._reduce(0.5 * (x - (1.0 if target_is_real else 0.0)) ** 2)
        if m in ("minimax", "nonsaturating"):
            if for_discriminator or m == "nonsaturating":
                # -log sigma(x) for real targets, -log(1 - sigma(x)) for fake ones
                return self._reduce(F.softplus(-x) if target_is_real else F.softplus(x))
            # minimax generator: minimise log(1 - sigma(D(G(z)))) = -softplus(x)
            return self._reduce(-F.softplus(x))
        if m == "hinge":
            if for_discriminator:
                return self._reduce(F.relu(1.0 - x) if target_is_real else F.relu(1.0 + x))
            return self._reduce(-x)
        # wgan
        return self._reduce(-x if target_is_real else x)


GAN_MODES: tuple[str, ...] = ("lsgan", "minimax", "nonsaturating", "hinge", "wgan")
