"""Small training helpers: the image pool, freezing, seeding, device choice."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


class ImagePool:
    """History of generated images for discriminator updates (Shrivastava et al. 2017; Zhu et al.
    2017, sec. 4): once full, each query returns with probability 0.5 a stored image (replaced by
    the new one) and otherwise the new image. Its random state is its own and is saved in
    checkpoints, so resumed training draws the same images.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` detached images -> ``(B, C, D, H, W)`` from the pool or the input."""
        if self.size <= 0:
            return images
        out = []
        for img in images.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self.rng.random() < 0.5:
                j = self.rng.randrange(self.size)
                out.append(self.images[j].clone())
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [i.cpu() for i in self.images], "rng": repr(self.rng.getstate())}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        import ast

        self.images = [i.to(device) for i in state["images"]]
        self.rng.setstate(ast.literal_eval(state["rng"]))


def set_requires_grad(nets: nn.Module | list[nn.Module], requires_grad: bool) -> None:
    """Freeze or unfreeze every parameter of ``nets``."""
    for net in nets if isinstance(nets, list) else [nets]:
        for p in net.parameters():
            p.requires_grad_(requires_grad)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev
