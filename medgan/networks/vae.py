"""Autoencoder family for any ``spatial_dims``: VAE / beta-VAE, conditional VAE, VQ-VAE, AAE.

- VAE: Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (reparameterisation
  ``z = mu + sigma * eps``, analytic KL, :func:`vae_loss`). beta-VAE: Higgins et al., ICLR 2017
  (``beta`` weights the KL in :func:`vae_loss`).
- Conditional VAE: Sohn, Lee & Yan, "Learning Structured Output Representation using Deep
  Conditional Generative Models", NeurIPS 2015: encoder q(z|x, c), decoder p(x|z, c), prior
  N(0, I) (``prior="fixed"``) or a learned p(z|c) (``prior="learned"``, the paper's
  "conditional prior network"). ``c`` is a class index ``(B,)`` or a label map ``(B, 1, *spatial)``.
- VQ-VAE: van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning",
  NeurIPS 2017, wrapping MONAI's ``VQVAE`` (EMA codebook, straight-through estimator).
- Adversarial autoencoder: Makhzani et al., "Adversarial Autoencoders", arXiv 1511.05644 (2015):
  a deterministic encoder whose codes a latent discriminator pushes towards the prior.

Images are expected in [-1, 1]; decoders end in tanh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.networks.nets import VQVAE as _MonaiVQVAE
from torch import nn

from medgan.losses.divergences import kl_normal


class VAEOutput(NamedTuple):
    """``recon (B, C, *spatial)``, ``mu``/``logvar``/``z`` ``(B, latent_dim)``; the learned prior's
    ``prior_mu``/``prior_logvar`` (``None`` for N(0, I))."""

    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    prior_mu: torch.Tensor | None = None
    prior_logvar: torch.Tensor | None = None


class VQVAEOutput(NamedTuple):
    recon: torch.Tensor
    quantization_loss: torch.Tensor


class AAEOutput(NamedTuple):
    recon: torch.Tensor
    z: torch.Tensor


def _block(spatial_dims: int, cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        Conv[Conv.CONV, spatial_dims](cin, cout, 3, stride=stride, padding=1),
        Norm[Norm.INSTANCE, spatial_dims](cout, affine=True), nn.LeakyReLU(0.2, True),
    )


class ConvEncoder(nn.Module):
    """Stride-2 conv blocks then a linear map: ``(B, C, *input_size)`` -> ``(B, out_features)``.
    Each input size must be divisible by ``2**len(channels)``."""

    def __init__(self, spatial_dims: int, in_channels: int, input_size: Sequence[int], channels: Sequence[int], out_features: int) -> None:
        super().__init__()
        f = 2 ** len(channels)
        if any(s % f for s in input_size):
            raise ValueError(f"input_size {tuple(input_size)} must be divisible by {f} (2**len(channels))")
        layers, cin = [], in_channels
        for c in channels:
            layers.append(_block(spatial_dims, cin, c, 2))
            cin = c
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(channels[-1] * int(torch.tensor([s // f for s in input_size]).prod()), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """``(B, in_features)`` -> ``(B, out_channels, *output_size)`` in (-1, 1): linear, then
    nearest upsampling + conv blocks; ``cond_channels`` > 0 concatenates a (resized) label map to
    every stage's input."""

    def __init__(self, spatial_dims: int, in_features: int, output_size: Sequence[int], channels: Sequence[int],
                 out_channels: int, cond_channels: int = 0) -> None:
        super().__init__()
        f = 2 ** len(channels)
        self.low = [s // f for s in output_size]
        self.c0, self.cond_channels = channels[-1], cond_channels
        self.fc = nn.Linear(in_features, channels[-1] * int(torch.tensor(self.low).prod()))
        rev = list(channels[::-1]) + [channels[0]]
        self.stages = nn.ModuleList(_block(spatial_dims, cin + cond_channels, cout, 1) for cin, cout in zip(rev[:-1], rev[1:]))
        self.out = Conv[Conv.CONV, spatial_dims](rev[-1] + cond_channels, out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor, cond_map: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fc(h).view(h.shape[0], self.c0, *self.low)

        def cat(t: torch.Tensor) -> torch.Tensor:
            if cond_map is None:
                return t
            return torch.cat([t, F.interpolate(cond_map, size=t.shape[2:], mode="nearest")], 1)

        for stage in self.stages:
            x = stage(cat(F.interpolate(x, scale_factor=2, mode="nearest")))
        return torch.tanh(self.out(cat(x)))


class VAE(nn.Module):
    """Gaussian VAE (and CVAE with ``condition``) for ``(B, in_channels, *input_size)`` images.

    Args:
        spatial_dims, in_channels, input_size: image layout; sizes divisible by ``2**len(channels)``.
        latent_dim: size of z.
        channels: encoder channels per stride-2 stage (the decoder mirrors them).
        condition: ``None`` (VAE), ``"class"`` (c: ``(B,)`` int) or ``"labelmap"`` (c: ``(B, 1, *input_size)`` int).
        num_classes: number of classes of c (background included for label maps).
        prior: ``"fixed"`` N(0, I) or ``"learned"`` p(z|c) (conditional only).

    Forward: ``(x, c)`` -> :class:`VAEOutput`.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, input_size: Sequence[int] = (32, 32), latent_dim: int = 16,
                 channels: Sequence[int] = (16, 32, 64), condition: Literal["class", "labelmap"] | None = None,
                 num_classes: int = 0, prior: Literal["fixed", "learned"] = "fixed") -> None:
        super().__init__()
        if condition is not None and num_classes < 1:
            raise ValueError("a conditional VAE needs num_classes >= 1")
        if prior == "learned" and condition is None:
            raise ValueError("a learned prior p(z|c) needs a condition")
        self.condition, self.num_classes, self.latent_dim, self.prior = condition, num_classes, latent_dim, prior
        self.input_size = tuple(input_size)
        map_ch = num_classes if condition == "labelmap" else 0
        vec = num_classes if condition == "class" else 0
        self.encoder = ConvEncoder(spatial_dims, in_channels + map_ch, input_size, channels, 2 * latent_dim)
        self.enc_vec = nn.Linear(vec, 2 * latent_dim, bias=False) if vec else None
        self.decoder = ConvDecoder(spatial_dims, latent_dim + vec, input_size, channels, in_channels, map_ch)
        if prior == "learned":
            self.prior_net: nn.Module = (
                nn.Sequential(nn.Linear(num_classes, 64), nn.LeakyReLU(0.2), nn.Linear(64, 2 * latent_dim))
                if condition == "class" else ConvEncoder(spatial_dims, num_classes, input_size, channels, 2 * latent_dim)
            )

    def _cond(self, c: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """c -> (vector one-hot (B, K) or None, map one-hot (B, K, *spatial) or None)."""
        if self.condition is None:
            return None, None
        if c is None:
            raise ValueError(f"this VAE is conditioned on a {self.condition}: pass c")
        if self.condition == "class":
            return F.one_hot(c.long().view(-1), self.num_classes).float(), None
        return None, F.one_hot(c[:, 0].long(), self.num_classes).movedim(-1, 1).float()

    def prior_params(self, c: torch.Tensor | None, batch: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(mu, logvar)`` of p(z|c), or ``(None, None)`` for N(0, I)."""
        if self.prior != "learned":
            return None, None
        vec, cmap = self._cond(c)
        mu, logvar = self.prior_net(vec if vec is not None else cmap).chunk(2, 1)
        return mu, logvar

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        vec, cmap = self._cond(c)
        h = self.encoder(x if cmap is None else torch.cat([x, cmap], 1))
        if vec is not None:
            h = h + self.enc_vec(vec)
        mu, logvar = h.chunk(2, 1)
        return mu, logvar.clamp(-20, 10)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        vec, cmap = self._cond(c)
        return self.decoder(z if vec is None else torch.cat([z, vec], 1), cmap)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> VAEOutput:
        mu, logvar = self.encode(x, c)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation trick
        pm, plv = self.prior_params(c, x.shape[0], x.device)
        return VAEOutput(self.decode(z, c), mu, logvar, z, pm, plv)

    @torch.no_grad()
    def sample(self, n: int | None = None, c: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images (or one per condition in ``c``) from the prior."""
        b = c.shape[0] if c is not None else int(n or 1)
        device = next(self.parameters()).device
        eps = torch.randn(b, self.latent_dim, generator=generator, device=device)
        pm, plv = self.prior_params(c, b, device)
        z = eps if pm is None else pm + eps * (0.5 * plv).exp()
        return self.decode(z, c)


def CVAE(spatial_dims: int = 2, num_classes: int = 2, condition: Literal["class", "labelmap"] = "class", **kwargs) -> VAE:  # noqa: N802
    """A conditional :class:`VAE` (Sohn et al. 2015)."""
    return VAE(spatial_dims=spatial_dims, condition=condition, num_classes=num_classes, **kwargs)


def vae_loss(out: VAEOutput, x: torch.Tensor, beta: float = 1.0, recon: Literal["gaussian", "laplace"] = "gaussian",
             sigma: float = 0.1) -> dict[str, torch.Tensor]:
    """Negative ELBO per sample, averaged over the batch: ``recon + beta * KL``.

    The reconstruction term is the negative log-likelihood of ``x`` in [-1, 1] under a Gaussian
    (``sum (x - x')^2 / (2 sigma^2)``) or Laplace (``sum |x - x'| / sigma``) decoder with a fixed
    scale ``sigma`` (intensity units of the [-1, 1] scale), constants dropped. KL is analytic
    (:func:`kl_normal`) against N(0, I) or the learned prior. beta = 1 is the VAE; beta > 1 the
    beta-VAE (Higgins et al. 2017, Eq. 4).
    """
    diff = (out.recon.float() - x.float()).flatten(1)
    rec = (diff.pow(2).sum(1) / (2 * sigma**2)) if recon == "gaussian" else (diff.abs().sum(1) / sigma)
    kl = kl_normal(out.mu, out.logvar, out.prior_mu, out.prior_logvar)
    return {"recon": rec.mean(), "kl": kl.mean(), "total": (rec + beta * kl).mean()}


class VQVAE(nn.Module):
    """VQ-VAE on MONAI's ``VQVAE`` (EMA codebook updates, van den Oord et al. 2017 appendix A.1;
    straight-through gradients from decoder to encoder). Forward: ``(B, C, *spatial)`` ->
    :class:`VQVAEOutput` (``quantization_loss`` already holds the commitment term, weight
    ``commitment_cost`` = 0.25 as in the paper); train on ``recon_loss + quantization_loss``.
    Each spatial size must be divisible by ``2**len(channels)``."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, channels: Sequence[int] = (32, 64),
                 num_embeddings: int = 64, embedding_dim: int = 16, commitment_cost: float = 0.25) -> None:
        super().__init__()
        n = len(channels)
        self.net = _MonaiVQVAE(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=in_channels, channels=tuple(channels),
            num_res_channels=tuple(channels), num_res_layers=1, downsample_parameters=((2, 4, 1, 1),) * n,
            upsample_parameters=((2, 4, 1, 1, 0),) * n, num_embeddings=num_embeddings, embedding_dim=embedding_dim,
            commitment_cost=commitment_cost,
        )

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        recon, qloss = self.net(x)
        return VQVAEOutput(recon, qloss)


class AdversarialAutoencoder(nn.Module):
    """Deterministic autoencoder with a latent discriminator (Makhzani et al. 2015).

    ``forward(x)`` -> :class:`AAEOutput`; ``discriminator(z (B, latent_dim))`` -> logits ``(B, 1)``;
    ``sample_prior(n)`` draws the target prior N(0, I). Training: see
    :func:`medgan.training.aae_step`.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, input_size: Sequence[int] = (32, 32),
                 latent_dim: int = 8, channels: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(spatial_dims, in_channels, input_size, channels, latent_dim)
        self.decoder = ConvDecoder(spatial_dims, latent_dim, input_size, channels, in_channels)
        self.discriminator = nn.Sequential(nn.Linear(latent_dim, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128),
                                           nn.LeakyReLU(0.2), nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> AAEOutput:
        z = self.encoder(x)
        return AAEOutput(self.decoder(z), z)

    def sample_prior(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.randn(n, self.latent_dim, device=device)


class SpatialCVAE(nn.Module):
    """Fully convolutional conditional VAE on label maps (Sohn et al. 2015) for volumes of any size.

    The latent is a map ``z (B, latent_channels, D/f, H/f, W/f)`` with ``f = 2**len(channels)``, so
    a model trained on patches decodes whole volumes; the one-hot label map ``c`` enters the
    encoder q(z|x, c), the learned prior p(z|c) (``prior="learned"``) and every decoder stage
    p(x|z, c). Forward: ``x (B, in_channels, D, H, W)`` in [-1, 1], ``c (B, 1, D, H, W)`` class
    indices (each size divisible by ``f``) -> :class:`VAEOutput` with map-shaped ``mu``/``logvar``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, num_classes: int = 2, latent_channels: int = 8,
                 channels: Sequence[int] = (16, 32, 64), prior: Literal["fixed", "learned"] = "learned") -> None:
        super().__init__()
        self.num_classes, self.latent_channels, self.prior, self.factor = num_classes, latent_channels, prior, 2 ** len(channels)
        conv = Conv[Conv.CONV, spatial_dims]

        def down(cin: int) -> nn.Sequential:
            layers, c = [], cin
            for ch in channels:
                layers.append(_block(spatial_dims, c, ch, 2))
                c = ch
            layers.append(conv(c, 2 * latent_channels, 3, padding=1))
            return nn.Sequential(*layers)

        self.encoder = down(in_channels + num_classes)
        if prior == "learned":
            self.prior_net = down(num_classes)
        rev = [*channels[::-1], channels[0]]
        self.inp = _block(spatial_dims, latent_channels + num_classes, rev[0], 1)
        self.stages = nn.ModuleList(_block(spatial_dims, cin + num_classes, cout, 1) for cin, cout in zip(rev[:-1], rev[1:]))
        self.out = conv(rev[-1] + num_classes, in_channels, 3, padding=1)

    def onehot(self, c: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c[:, 0].long().clamp(0, self.num_classes - 1), self.num_classes).movedim(-1, 1).float()

    def _check(self, t: torch.Tensor) -> None:
        if any(s % self.factor for s in t.shape[2:]):
            raise ValueError(f"spatial size {tuple(t.shape[2:])} must be divisible by {self.factor}")

    def prior_params(self, c1h: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.prior != "learned":
            return None, None
        mu, logvar = self.prior_net(c1h).chunk(2, 1)
        return mu, logvar.clamp(-20, 10)

    def decode(self, z: torch.Tensor, c1h: torch.Tensor) -> torch.Tensor:
        def cat(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, F.interpolate(c1h, size=t.shape[2:], mode="nearest")], 1)

        x = self.inp(cat(z))
        for stage in self.stages:
            x = stage(cat(F.interpolate(x, scale_factor=2, mode="nearest")))
        return torch.tanh(self.out(cat(x)))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> VAEOutput:
        self._check(x)
        c1h = self.onehot(c)
        mu, logvar = self.encoder(torch.cat([x, c1h], 1)).chunk(2, 1)
        logvar = logvar.clamp(-20, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        pm, plv = self.prior_params(c1h)
        return VAEOutput(self.decode(z, c1h), mu, logvar, z, pm, plv)

    def latent_shape(self, c: torch.Tensor) -> tuple[int, ...]:
        """Shape ``(B, latent_channels, D/f, H/f, W/f)`` of the latent map for label maps ``c``."""
        return (c.shape[0], self.latent_channels, *[s // self.factor for s in c.shape[2:]])

    @torch.no_grad()
    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
               truncation: float | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``(B, in_channels, D, H, W)`` for label maps ``c (B, 1, D, H, W)`` from the prior:
        ``z = mu(c) + sigma(c) * eps`` with ``eps`` standard normal (drawn on the CPU from
        ``generator``), truncated at ``truncation`` (BigGAN's trick, :func:`medgan.sampling.truncated_normal`;
        0 gives the prior's mean) and times ``temperature``; or the given ``eps`` (latent-map shaped)."""
        from medgan.sampling import latent_noise

        self._check(c)
        c1h = self.onehot(c)
        if eps is None:
            eps = latent_noise(self.latent_shape(c), truncation=truncation, temperature=temperature, generator=generator)
        eps = eps.to(c.device, torch.float32)
        pm, plv = self.prior_params(c1h)
        z = eps if pm is None else pm + eps * (0.5 * plv).exp()
        return self.decode(z, c1h)
