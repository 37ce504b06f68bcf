"""GAN networks for any ``spatial_dims``: DCGAN, class- and label-map-conditioned GANs, pix2pix.

- DCGAN: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
  Convolutional Generative Adversarial Networks", ICLR 2016 (batch norm, ReLU in G, LeakyReLU
  0.2 in D, tanh output). Upsampling is nearest + convolution by default instead of the paper's
  fractionally-strided convolutions (checkerboard artifacts, slow 3D on CPU: PITFALLS.md);
  ``upsample="deconv"`` gives the paper's layers.
- Class-conditioned GAN (Mirza & Osindero 2014): the class embedding is concatenated to z; the
  discriminator is a projection discriminator (Miyato & Koyama, "cGANs with Projection
  Discriminator", ICLR 2018, Eq. 3).
- Label-map-conditioned GAN and pix2pix (Isola et al., "Image-to-Image Translation with
  Conditional Adversarial Networks", CVPR 2017): a U-Net generator and a PatchGAN that sees the
  condition concatenated to the image; :func:`pix2pix_generator_loss` adds L1 with weight 100.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from medgan.losses.adversarial import AdversarialLoss
from medgan.networks.discriminators import PatchDiscriminator
from medgan.networks.generators import UNetGenerator
from medgan.networks.layers import apply_spectral_norm


def _norm(kind: str | None, spatial_dims: int, ch: int) -> nn.Module:
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return Norm[Norm.BATCH, spatial_dims](ch)
    if kind == "instance":
        return Norm[Norm.INSTANCE, spatial_dims](ch, affine=True)
    if kind == "layer":  # per-sample normalisation: no batch coupling, as WGAN-GP critics need
        return nn.GroupNorm(1, ch)
    raise ValueError(f"unknown norm {kind!r}; use 'batch', 'instance', 'layer' or None")


class DCGANGenerator(nn.Module):
    """``z (B, latent_dim)`` -> ``(B, out_channels, *[base * 2**n_up] * spatial_dims)`` in (-1, 1).

    Args:
        channels: feature channels from the lowest resolution up, e.g. (128, 64, 32); its length
            is the number of upsamplings ``n_up``.
        base: spatial size of the first feature map (4 in the paper), so 2D with 3 stages gives 32x32.
        extra_channels: channels of a conditioning vector concatenated to z (class-conditioned GAN).
    """

    def __init__(self, spatial_dims: int = 2, latent_dim: int = 64, out_channels: int = 1,
                 channels: Sequence[int] = (128, 64, 32), base: int = 4, upsample: str = "nearest",
                 norm: str | None = "batch", extra_channels: int = 0) -> None:
        super().__init__()
        self.spatial_dims, self.base, self.c0 = spatial_dims, base, channels[0]
        self.fc = nn.Linear(latent_dim + extra_channels, channels[0] * base**spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = [_norm(norm, spatial_dims, channels[0]), nn.ReLU(True)]
        chans = list(channels) + [channels[-1]]
        for cin, cout in zip(chans[:-1], chans[1:]):
            if upsample == "deconv":
                layers.append(Conv[Conv.CONVTRANS, spatial_dims](cin, cout, 4, stride=2, padding=1, bias=False))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout, 3, padding=1, bias=False)]
            layers += [_norm(norm, spatial_dims, cout), nn.ReLU(True)]
        layers += [conv(chans[-1], out_channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = z if cond is None else torch.cat([z, cond], 1)
        h = self.fc(h).view(z.shape[0], self.c0, *([self.base] * self.spatial_dims))
        return self.net(h)


class DCGANDiscriminator(nn.Module):
    """``x (B, in_channels, *spatial)`` -> logits ``(B, 1)``.

    Args:
        channels: channels of the stride-2 convolutions, e.g. (32, 64, 128).
        norm: ``"batch"`` (DCGAN), ``"layer"``/``None`` for WGAN-GP critics (Gulrajani et al.
            2017, sec. 4: no batch norm in the critic), ``"instance"``.
        spectral_norm: spectrally normalise every layer (Miyato et al. 2018).
        num_classes: > 0 adds a class projection term (projection discriminator).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128),
                 norm: str | None = "batch", spectral_norm: bool = False, num_classes: int = 0) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, c in enumerate(channels):
            layers += [conv(cin, c, 4, stride=2, padding=1, bias=norm is None or i == 0),
                       nn.Identity() if i == 0 else _norm(norm, spatial_dims, c), nn.LeakyReLU(0.2, True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[spatial_dims - 1](1)
        self.out = nn.Linear(cin, 1)
        self.embed = nn.Embedding(num_classes, cin) if num_classes > 0 else None
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        logit = self.out(h)
        if self.embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditioned: pass labels (B,) int")
            logit = logit + (self.embed(labels) * h).sum(1, keepdim=True)  # projection term
        return logit


class ConditionalDCGANGenerator(DCGANGenerator):
    """Class-conditioned DCGAN generator: ``(z (B, latent_dim), labels (B,) int)`` -> images."""

    def __init__(self, num_classes: int, embed_dim: int = 16, **kwargs) -> None:
        super().__init__(extra_channels=embed_dim, **kwargs)
        self.embed = nn.Embedding(num_classes, embed_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(z, self.embed(labels))


class LabelMapGenerator(nn.Module):
    """Label-map-conditioned generator: ``(labels (B, 1, *spatial) int, noise)`` -> image
    ``(B, out_channels, *spatial)`` in (-1, 1); a U-Net on the one-hot label map plus
    ``noise_channels`` channels of N(0, 1) noise (drawn when not given)."""

    def __init__(self, spatial_dims: int, num_classes: int, out_channels: int = 1, noise_channels: int = 1,
                 features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)) -> None:
        super().__init__()
        self.num_classes, self.noise_channels = num_classes, noise_channels
        self.unet = UNetGenerator(spatial_dims, num_classes + noise_channels, out_channels, features)

    def forward(self, labels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        onehot = F.one_hot(labels[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        if noise is None:
            noise = torch.randn(labels.shape[0], self.noise_channels, *labels.shape[2:], device=labels.device)
        return self.unet(torch.cat([onehot, noise], 1))


class ConditionalPatchDiscriminator(nn.Module):
    """PatchGAN that sees its condition: ``D(image, condition)`` with both ``(B, C_i, *spatial)``
    concatenated on channels (pix2pix; label-map GANs pass a one-hot label map) -> patch logits."""

    def __init__(self, spatial_dims: int, image_channels: int, condition_channels: int, ndf: int = 32, n_layers: int = 3) -> None:
        super().__init__()
        self.net = PatchDiscriminator(spatial_dims, image_channels + condition_channels, ndf, n_layers)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, condition.to(image.dtype)], 1))


def pix2pix_generator_loss(adv: AdversarialLoss, d_fake: torch.Tensor, fake: torch.Tensor, target: torch.Tensor,
                           lambda_l1: float = 100.0) -> dict[str, torch.Tensor]:
    """pix2pix generator objective (Isola et al. 2017, Eq. 4): ``L_cGAN(G, D) + lambda |y - G(x)|_1``
    with lambda = 100. Returns ``{"adv", "l1", "total"}``."""
    a = adv(d_fake, True, for_discriminator=False)
    l1 = F.l1_loss(fake.float(), target.float())
    return {"adv": a, "l1": l1, "total": a + lambda_l1 * l1}
