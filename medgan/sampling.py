"""Latent sampling controls for the generative models (CVAE, VAE, GANs).

- :func:`latent_noise`: standard normal noise from a seeded generator (a figure can be remade),
  optionally truncated: the **truncation trick** of BigGAN (Brock, Donahue & Simonyan, ICLR 2019,
  sec. 3.1): values whose magnitude exceeds the threshold are resampled until they fall inside
  it, trading diversity for fidelity. Threshold 0 gives z = 0, the mode of the prior: for a CVAE
  with a learned prior p(z|c) that is its mean, so the "mean sample". ``temperature`` scales
  the noise instead (the older alternative, Kingma & Dhariwal 2018).
- :func:`lerp` and :func:`slerp`: linear and spherical interpolation between two latents
  (spherical: Shoemake, SIGGRAPH 1985; recommended for Gaussian latents by White, arXiv
  1609.04468), which keeps the norm of two equal-norm latents, so the path stays on the shell
  where the prior's samples live.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def truncated_normal(shape: Sequence[int], threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal samples of ``shape`` with every value in ``[-threshold, threshold]``:
    values outside are redrawn (BigGAN's truncation trick), so each value follows the normal
    distribution truncated to that interval. ``threshold`` 0 gives zeros.

    Raises:
        ValueError: negative ``threshold``.
    """
    if threshold < 0:
        raise ValueError(f"truncation threshold {threshold} must be >= 0")
    z = torch.randn(tuple(shape), generator=generator)
    if threshold == 0:
        return torch.zeros_like(z)
    for _ in range(1000):  # P(|z| > t) < 1 for t > 0: a few rounds for any sensible t
        out = z.abs() > threshold
        if not bool(out.any()):
            return z
        z[out] = torch.randn(int(out.sum()), generator=generator)
    return z.clamp(-threshold, threshold)  # t so small that 1000 rounds did not do (< 1e-3): clamp what is left


def latent_noise(shape: Sequence[int], seed: int | None = None, truncation: float | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``eps`` of ``shape`` for a latent ``z = mu + sigma * eps``: standard normal from
    ``seed`` (or ``generator``), truncated at ``truncation`` when given, times ``temperature``."""
    gen = generator if generator is not None else (torch.Generator().manual_seed(int(seed)) if seed is not None else None)
    eps = truncated_normal(shape, truncation, gen) if truncation is not None else torch.randn(tuple(shape), generator=gen)
    return eps * temperature


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation ``(1 - t) z0 + t z1``."""
    return (1.0 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation between ``z0`` and ``z1`` (each flattened as one vector):
    ``sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1`` with ``w`` the angle between them;
    linear when they are (anti)parallel within ``eps``. For ``|z0| = |z1|`` every point has that norm."""
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(eps)
    w = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(w).abs()) < eps:
        return lerp(z0, z1, t)
    out = (torch.sin((1 - t) * w) * a + torch.sin(t * w) * b) / torch.sin(w)
    return out.view_as(z0).to(z0.dtype)
