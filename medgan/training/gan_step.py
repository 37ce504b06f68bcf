"""A generic GAN training step: ``n_critic`` discriminator updates, then one generator update.

Covers the standard recipes through its arguments:

- DCGAN / LSGAN / hinge: ``n_critic=1``, no penalty;
- WGAN (Arjovsky et al. 2017, Algorithm 1): ``AdversarialLoss("wgan")``, ``n_critic=5``,
  ``clip_value=0.01`` (RMSProp in the paper);
- WGAN-GP (Gulrajani et al. 2017, Algorithm 1): ``"wgan"``, ``n_critic=5``,
  ``penalty="gp"``, ``penalty_weight=10`` (Adam 1e-4, betas (0, 0.9));
- R1 (Mescheder et al. 2018): ``penalty="r1"``, ``penalty_weight=gamma/2``;
- conditional GANs and pix2pix: ``cond`` is passed to the discriminator as ``D(x, cond)``;
  ``g_extra`` adds weighted generator terms (pix2pix L1).

Mixed precision: bfloat16 autocast on ``device_type`` when ``amp`` (no gradient scaler needed
for bfloat16); losses and penalties are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medgan.losses.adversarial import AdversarialLoss, clip_weights, gradient_penalty, r1_penalty
from medgan.utils import set_requires_grad


class GANStep:
    """Args:
        generator, discriminator: the networks; ``discriminator(x)`` or ``discriminator(x, cond)``.
        g_optimizer, d_optimizer: their optimizers.
        loss: an :class:`AdversarialLoss`.
        n_critic: discriminator updates per generator update.
        penalty: ``None``, ``"gp"`` (WGAN-GP) or ``"r1"``; ``penalty_weight`` multiplies it.
        clip_value: WGAN weight clipping after each critic update (``None``: off).
        amp: bfloat16 autocast on ``device_type``.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, g_optimizer: torch.optim.Optimizer,
                 d_optimizer: torch.optim.Optimizer, loss: AdversarialLoss, n_critic: int = 1, penalty: str | None = None,
                 penalty_weight: float = 10.0, clip_value: float | None = None, amp: bool = False, device_type: str = "cpu") -> None:
        if penalty not in (None, "gp", "r1"):
            raise ValueError(f"penalty must be None, 'gp' or 'r1', got {penalty!r}")
        if n_critic < 1:
            raise ValueError("n_critic must be >= 1")
        self.G, self.D, self.g_opt, self.d_opt, self.loss = generator, discriminator, g_optimizer, d_optimizer, loss
        self.n_critic, self.penalty, self.penalty_weight, self.clip_value = n_critic, penalty, penalty_weight, clip_value
        self.amp, self.device_type = amp, device_type

    def _autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16, enabled=self.amp)

    def _d(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return self.D(x) if cond is None else self.D(x, cond)

    def __call__(self, real: torch.Tensor | list[torch.Tensor], g_input: torch.Tensor | Callable[[], torch.Tensor],
                 cond: torch.Tensor | list[torch.Tensor] | None = None,
                 g_extra: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
        """One step. ``real``: a batch ``(B, C, *spatial)`` reused by every critic update, or a list
        of ``n_critic`` batches; ``g_input``: the generator input (z or a source image) or a
        callable drawing a fresh one per update; ``cond``: discriminator condition (a tensor, or a
        list aligned with ``real``). Returns the losses by name."""
        reals = real if isinstance(real, list) else [real] * self.n_critic
        conds = cond if isinstance(cond, list) else [cond] * len(reals)
        draw = g_input if callable(g_input) else (lambda: g_input)
        logs: dict[str, float] = {}
        set_requires_grad(self.D, True)
        for x, c in zip(reals, conds):
            with torch.no_grad(), self._autocast():
                fake = self.G(draw())
            with self._autocast():
                d_loss = self.loss(self._d(x, c), True) + self.loss(self._d(fake.float(), c), False)
            if self.penalty == "gp":
                pen = gradient_penalty(self.D, x, fake.float(), *([c] if c is not None else []))
                d_loss = d_loss + self.penalty_weight * pen
                logs["gp"] = float(pen.detach())
            elif self.penalty == "r1":
                pen = r1_penalty(self.D, x, *([c] if c is not None else []))
                d_loss = d_loss + self.penalty_weight * pen
                logs["r1"] = float(pen.detach())
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            if self.clip_value is not None:
                clip_weights(self.D, self.clip_value)
        logs["d_loss"] = float(d_loss.detach())
        set_requires_grad(self.D, False)
        with self._autocast():
            fake = self.G(draw())
            g_loss = self.loss(self._d(fake, conds[-1]), True, for_discriminator=False)
            if g_extra is not None:
                for k, v in g_extra(fake).items():
                    g_loss = g_loss + v
                    logs[k] = float(v.detach())
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_opt.step()
        set_requires_grad(self.D, True)
        logs["g_loss"] = float(g_loss.detach())
        return logs


def aae_step(model: nn.Module, x: torch.Tensor, ae_optimizer: torch.optim.Optimizer, d_optimizer: torch.optim.Optimizer,
             g_optimizer: torch.optim.Optimizer, loss: AdversarialLoss | None = None) -> dict[str, float]:
    """One adversarial-autoencoder step (Makhzani et al. 2015, sec. 2): reconstruction (L2) on
    encoder+decoder; the latent discriminator separates prior samples from codes; the encoder
    is updated to fool it. ``model`` is an :class:`~medgan.networks.vae.AdversarialAutoencoder`."""
    loss = loss or AdversarialLoss("nonsaturating")
    out = model(x)
    rec = torch.nn.functional.mse_loss(out.recon.float(), x.float())
    ae_optimizer.zero_grad(set_to_none=True)
    rec.backward()
    ae_optimizer.step()
    z_fake = model.encoder(x).detach()
    z_real = model.sample_prior(x.shape[0], x.device)
    d = loss(model.discriminator(z_real), True) + loss(model.discriminator(z_fake), False)
    d_optimizer.zero_grad(set_to_none=True)
    d.backward()
    d_optimizer.step()
    set_requires_grad(model.discriminator, False)
    g = loss(model.discriminator(model.encoder(x)), True, for_discriminator=False)
    g_optimizer.zero_grad(set_to_none=True)
    g.backward()
    g_optimizer.step()
    set_requires_grad(model.discriminator, True)
    return {"recon": float(rec.detach()), "d_loss": float(d.detach()), "g_loss": float(g.detach())}
