"""Supervised training of a segmenter on patches (any MONAI-style network)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from medgan.keys import Keys
from medgan.losses import MaskedDiceCELoss

logger = logging.getLogger(__name__)


def fit_segmenter(model: nn.Module, datasets: list[torch.utils.data.Dataset], weights: list[float], n_iters: int,
                  lr: float = 1e-3, batch_size: int = 2, seed: int = 0, device: torch.device | str = "cpu") -> list[float]:
    """Train ``model`` with Dice + cross-entropy for ``n_iters`` iterations; each patch comes from
    ``datasets[i]`` with probability ``weights[i]`` (e.g. real and synthetic pairs). Items are
    ``{"image": (1, D, H, W), "label": (1, D, H, W), "has_label": bool}``. Returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.tensor(weights, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    crit = MaskedDiceCELoss()
    model.to(device).train()
    losses = []
    for it in range(n_iters):
        items = []
        for b in range(batch_size):
            d = int(torch.multinomial(probs, 1, generator=gen))
            items.append(datasets[d][int(torch.randint(len(datasets[d]), (1,), generator=gen))])
        x = torch.stack([i[Keys.IMAGE.value] for i in items]).to(device)
        y = torch.stack([i[Keys.LABEL.value] for i in items]).to(device)
        m = torch.tensor([i[Keys.HAS_LABEL.value] for i in items], device=device)
        loss = crit(model(x), y, m)
        if loss is None:
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (it + 1) % 100 == 0:
            logger.info("segmenter %d/%d loss %.3f", it + 1, n_iters, losses[-1])
    return losses
