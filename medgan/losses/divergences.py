"""Divergences between distributions: analytic Gaussian KL (VAEs) and kernel MMD."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor | None = None,
              prior_logvar: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar))`` per sample, summed over latent
    dimensions: ``(B, *latent)`` -> ``(B,)``. The prior defaults to N(0, I), where it reduces to
    ``-1/2 sum(1 + logvar - mu^2 - e^logvar)`` (Kingma & Welling, "Auto-Encoding Variational
    Bayes", ICLR 2014, appendix B)."""
    mu, logvar = mu.float(), logvar.float()
    if prior_mu is None:
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    else:
        pm, plv = prior_mu.float(), prior_logvar.float()
        kl = 0.5 * (plv - logvar + (logvar.exp() + (mu - pm).pow(2)) / plv.exp() - 1)
    return kl.flatten(1).sum(1)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] | None = None, unbiased: bool = True) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels ``exp(-|a-b|^2 / (2 s^2))``
    (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, Eq. 3 (unbiased) / Eq. 5 (biased)).

    ``x (N, ...)``, ``y (M, ...)`` are flattened per sample. ``bandwidths`` default to the median
    pairwise distance times (0.5, 1, 2).
    """
    x, y = x.float().flatten(1), y.float().flatten(1)
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidths is None:
        med = d2[d2 > 0].median().sqrt() if (d2 > 0).any() else torch.tensor(1.0, device=z.device)
        bandwidths = [float(med) * f for f in (0.5, 1.0, 2.0)]
    k = sum(torch.exp(-d2 / (2 * s**2)) for s in bandwidths)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    if unbiased:
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean(), kyy.mean()
    return sxx + syy - 2 * kxy.mean()


class MMDLoss(_Loss):
    """:func:`mmd2` as a loss module (e.g. for matching feature or latent distributions)."""

    def __init__(self, bandwidths: Sequence[float] | None = None, unbiased: bool = True) -> None:
        super().__init__()
        self.bandwidths, self.unbiased = bandwidths, unbiased

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd2(x, y, self.bandwidths, self.unbiased)


def class_sums(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-class intensity sums and voxel counts: ``x (B, 1, *spatial)`` intensities,
    ``y (B, 1, *spatial)`` class indices in ``[0, n_classes)``; other values (e.g.
    :data:`medgan.keys.UNLABELLED`) count in no class. Returns two ``(B, n_classes)`` float tensors."""
    x, y = x.float().flatten(1), y.flatten(1).long()
    known = (y >= 0) & (y < n_classes)
    idx = torch.where(known, y, torch.zeros_like(y))
    sums = x.new_zeros(x.shape[0], n_classes).scatter_add_(1, idx, torch.where(known, x, torch.zeros_like(x)))
    counts = x.new_zeros(x.shape[0], n_classes).scatter_add_(1, idx, known.float())
    return sums, counts


class ClassMeanLoss(_Loss):
    """Class-conditional first-moment discrepancy: the mean absolute difference, over the labelled
    batch members and the foreground classes present in them, between a volume's mean intensity in
    class ``c`` and a reference mean of class ``c``.

    This is the conditional-distribution MMD of Joint Distribution Adaptation (Long et al., ICCV
    2013: the distance between class-conditional means) with a linear kernel on intensities, taken
    as an L1 distance so its gradient does not vanish as the means approach (a 20 HU error is about
    0.05 in the networks' units). For translation with labels in both domains: ``G_A2B(x_A)`` with ``x_A``'s
    labels against the mean of each class over the real labelled B volumes, so each organ of a
    synthetic CT gets the real CT's HU level, which an adversarial loss on unpaired patches does
    not pin down.

    Forward: ``x (B, 1, D, H, W)``, ``y (B, 1, D, H, W)`` class indices, ``mask (B,)`` bool
    labelled flags, ``reference (K,)`` class means (NaN: class not seen in the reference; class 0,
    background, is never matched) -> scalar; ``None`` when no class is both present and known.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
        if not bool(mask.any()):
            return None
        sums, counts = class_sums(x[mask], y[mask], len(reference))
        ref = reference.to(sums)
        valid = (counts > 0) & torch.isfinite(ref)[None]
        valid[:, 0] = False
        if not bool(valid.any()):
            return None
        diff = (sums / counts.clamp_min(1) - torch.nan_to_num(ref)[None]).abs()
        return diff[valid].mean()
