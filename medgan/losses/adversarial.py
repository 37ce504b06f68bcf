"""Adversarial objectives on raw discriminator logits (safe under ``torch.autocast``).

MONAI's ``PatchAdversarialLoss`` applies an activation before its criterion (sigmoid + BCELoss,
tanh for hinge, LeakyReLU for least squares), which is not the textbook objective and is refused
under autocast (PITFALLS.md); these modules implement the equations directly, in float32.

Logits may be patch maps ``(B, 1, d, h, w)`` or ``(B, 1)``; the loss is averaged over every
element (``reduction="mean"``) or summed (``"sum"``). Penalties (:func:`gradient_penalty`,
:func:`r1_penalty`) and :func:`clip_weights` are separate, because they act on the critic, not
on its logits. :func:`build_adversarial_loss` is the one name-based registry configs use.
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

GANMode = Literal["lsgan", "minimax", "nonsaturating", "hinge", "wgan"]
GAN_MODES: tuple[str, ...] = ("lsgan", "minimax", "nonsaturating", "hinge", "wgan")


class AdversarialLoss(_Loss):
    """``loss(logits, target_is_real, for_discriminator)`` for one of the standard objectives.

    - ``lsgan`` as CycleGAN uses it (Zhu et al., ICCV 2017, sec. 4, "Training details"; the least
      squares objective of Mao et al., ICCV 2017, with a=0, b=c=1): each term is a squared error
      ``(D(.) - t)^2``: G minimises ``(D(G(x)) - 1)^2``, D ``(D(y) - 1)^2`` and ``D(G(x))^2``, as
      the reference code's ``nn.MSELoss``. (Mao et al. write 1/2 before each term; CycleGAN's
      weights lambda_cycle = 10 etc. are relative to the term without it.) Trainers that halve the
      discriminator's objective, as the CycleGAN reference code does, do so themselves.
    - ``minimax`` (Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, Eq. 1):
      D: ``-log s(D(x)) - log(1 - s(D(G(z))))``; G minimises ``log(1 - s(D(G(z))))``.
    - ``nonsaturating`` (Goodfellow et al. 2014, sec. 3): D as minimax; G: ``-log s(D(G(z)))``.
    - ``hinge`` (Lim & Ye 2017, arXiv 1705.02894; Miyato et al., ICLR 2018):
      D: ``relu(1 - D(x)) + relu(1 + D(G(z)))``; G: ``-D(G(z))``.
    - ``wgan`` (Arjovsky, Chintala & Bottou, ICML 2017, Eq. 3): critic: ``-D(x) + D(G(z))``;
      G: ``-D(G(z))``. Pair it with :func:`clip_weights` (WGAN) or :func:`gradient_penalty` (WGAN-GP).

    ``s`` is the logistic sigmoid and ``log s(x) = -softplus(-x)`` (stable, autocast-safe).

    Args:
        mode: one of :data:`GAN_MODES`.
        real_label: target of real samples for the discriminator; 0.9 gives one-sided label
            smoothing (Salimans et al., "Improved Techniques for Training GANs", NeurIPS 2016,
            sec. 3.4) for ``minimax``, ``nonsaturating`` and ``lsgan``. Generator targets stay 1.
        reduction: ``"mean"`` or ``"sum"``.

    Raises:
        ValueError: unknown mode (with the closest name), bad reduction, smoothing with a mode
            whose objective has no label.
    """

    def __init__(self, mode: GANMode = "lsgan", real_label: float = 1.0, reduction: Literal["mean", "sum"] = "mean") -> None:
        if mode not in GAN_MODES:
            close = difflib.get_close_matches(str(mode), GAN_MODES, n=1)
            raise ValueError(f"unknown GAN mode {mode!r}; choose from {GAN_MODES}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if real_label != 1.0 and mode in ("hinge", "wgan"):
            raise ValueError(f"label smoothing does not apply to the {mode} objective (it has no labels)")
        super().__init__(reduction=reduction)
        self.mode, self.real_label = mode, float(real_label)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean() if self.reduction == "mean" else x.sum()

    def forward(self, logits: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        x = logits.float()
        m = self.mode
        real = self.real_label if for_discriminator else 1.0
        if m == "lsgan":
            return self._reduce((x - (real if target_is_real else 0.0)) ** 2)  # Zhu et al. 2017, sec. 4
        if m in ("minimax", "nonsaturating"):
            if for_discriminator or m == "nonsaturating":
                if not target_is_real:
                    return self._reduce(F.softplus(x))  # -log(1 - s(x))
                # BCE with target t: t * softplus(-x) + (1 - t) * softplus(x)
                return self._reduce(real * F.softplus(-x) + (1.0 - real) * F.softplus(x))
            return self._reduce(-F.softplus(x))  # minimax G: minimise log(1 - s(x)) = -softplus(x)
        if m == "hinge":
            if for_discriminator:
                return self._reduce(F.relu(1.0 - x) if target_is_real else F.relu(1.0 + x))
            return self._reduce(-x)
        return self._reduce(-x if target_is_real else x)  # wgan


def build_adversarial_loss(name: str, **kwargs) -> AdversarialLoss:
    """The registry used by configs: ``"lsgan"``, ``"minimax"``, ``"nonsaturating"``,
    ``"hinge"``, ``"wgan"``; ``"wgan-gp"`` is ``wgan`` (add :func:`gradient_penalty` in the step)."""
    return AdversarialLoss("wgan" if name in ("wgan-gp", "wgan_gp") else name, **kwargs)  # type: ignore[arg-type]


def _grad_norm(critic: nn.Module, x: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    out = critic(x, *cond)
    (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.flatten(1).norm(2, dim=1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, *cond: torch.Tensor, target: float = 1.0) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_xhat D(xhat)||_2 - 1)^2]`` on random interpolates
    ``xhat = e x + (1 - e) G(z)`` (Gulrajani et al., "Improved Training of Wasserstein GANs",
    NeurIPS 2017, Eq. 3). ``real``/``fake``: ``(B, C, *spatial)``; returns a scalar to be weighted
    by lambda (10 in the paper). Extra ``cond`` tensors are passed to the critic unchanged."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), device=real.device, dtype=real.dtype)
    xhat = eps * real.detach() + (1 - eps) * fake.detach()
    return ((_grad_norm(critic, xhat, *cond) - target) ** 2).mean()


def r1_penalty(critic: nn.Module, real: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
    """R1 penalty ``E[||grad_x D(x)||^2]`` on real data (Mescheder, Geiger & Nowozin, "Which
    Training Methods for GANs do actually Converge?", ICML 2018, Eq. 9); weight by gamma/2."""
    return (_grad_norm(critic, real, *cond) ** 2).mean()


@torch.no_grad()
def clip_weights(critic: nn.Module, clip_value: float = 0.01) -> None:
    """Clamp every critic parameter to ``[-c, c]`` (WGAN, Arjovsky et al. 2017, Algorithm 1)."""
    for p in critic.parameters():
        p.clamp_(-clip_value, clip_value)
