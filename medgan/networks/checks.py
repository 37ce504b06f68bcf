"""Checks of a network's input before training starts (instead of a traceback from inside torch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def check_input_size(networks: Mapping[str, nn.Module], size: Sequence[int], where: str = "train.patch_size",
                     in_channels: int = 1) -> None:
    """Run each network once on zeros of ``(1, in_channels, *size)`` in training mode (instance
    norms need more than one value per channel there) without gradients, and refuse a size that
    one of them cannot take, saying the smallest isotropic size that works.

    Raises:
        ValueError: ``size`` is too small (or of the wrong shape) for a network; names it and ``where``.
    """
    device = next((p.device for n in networks.values() for p in n.parameters()), torch.device("cpu"))

    def fails(net: nn.Module, s: Sequence[int]) -> str | None:
        was = net.training
        net.train()
        try:
            with torch.no_grad():
                net(torch.zeros(1, in_channels, *[int(v) for v in s], device=device))
        except (RuntimeError, ValueError, IndexError) as err:
            return str(err).splitlines()[0]
        finally:
            net.train(was)
        return None

    failed = {name: why for name, net in networks.items() if (why := fails(net, size)) is not None}
    if not failed:
        return
    works = next((s for s in (8, 16, 24, 32, 48, 64, 96, 128)
                  if all(fails(net, [max(s, int(v)) for v in size]) is None for net in networks.values())), None)
    hint = f"; all networks take {where}={[max(works, int(v)) for v in size]}" if works else ""
    name, why = next(iter(failed.items()))
    raise ValueError(f"{where}={list(size)} is too small for {', '.join(failed)} ({name}: {why}){hint}")
