"""Layers for any ``spatial_dims``: spectral normalisation of a whole network, self-attention."""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def apply_spectral_norm(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Spectrally normalise every convolution, transposed convolution and linear layer of
    ``module`` in place (Miyato et al., "Spectral Normalization for Generative Adversarial
    Networks", ICLR 2018, Eq. 8: ``W / sigma(W)`` with sigma estimated by power iteration).
    Uses torch's ``parametrizations.spectral_norm``; returns ``module``."""
    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    for name, child in list(module.named_children()):
        if isinstance(child, types):
            setattr(module, name, spectral_norm(child, n_power_iterations=n_power_iterations))
        else:
            apply_spectral_norm(child, n_power_iterations)
    return module


class SelfAttention(nn.Module):
    """Self-attention block of SAGAN (Zhang, Goodfellow, Metaxas & Odena, "Self-Attention
    Generative Adversarial Networks", ICML 2019, Eqs. 1-3): ``y = gamma * o + x`` with
    ``o = v(x) softmax(f(x)^T g(x))`` over all positions and ``gamma`` initialised to 0.

    Forward: ``(B, C, *spatial)`` -> same shape; memory grows with ``(prod(spatial))^2``, so use it
    at low resolution in 3D.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        inner = max(1, channels // reduction)
        self.f, self.g = conv(channels, inner, 1), conv(channels, inner, 1)
        self.h, self.v = conv(channels, max(1, channels // 2), 1), conv(max(1, channels // 2), channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        q = self.f(x).flatten(2)  # (B, C', N)
        k = self.g(x).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): row i attends over j
        h = self.h(x).flatten(2)  # (B, C/2, N)
        o = (h @ attn.transpose(1, 2)).view(b, -1, *x.shape[2:])
        return x + self.gamma * self.v(o)
