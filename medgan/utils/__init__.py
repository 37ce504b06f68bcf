"""Small training helpers: the image pool, freezing, seeding, device choice."""

from __future__ import annotations

import csv
import random
from pathlib import Path

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


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA random states as tensors and plain values (loadable with
    ``torch.load(weights_only=True)``), for checkpoints."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": repr(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (keys absent from older checkpoints are skipped)."""
    import ast

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(ast.literal_eval(state["python"]))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


class LossLog:
    """``losses.csv``: one row per iteration; on resume, rows after the checkpoint are dropped."""

    def __init__(self, path: Path, start: int) -> None:
        self.path, self.rows, self.fields = path, [], None
        if path.is_file() and start > 0:
            with path.open() as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                self.rows = [r for r in reader if int(r["iteration"]) <= start]
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            if self.fields:
                w = csv.DictWriter(f, self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(self.rows)

    def write(self, it: int, logs: dict[str, float]) -> None:
        row = {"iteration": it, **{k: f"{v:.6g}" for k, v in logs.items()}}
        if self.fields is None or any(k not in self.fields for k in row):
            self.fields = list(dict.fromkeys([*(self.fields or []), *row]))
            self._rewrite()
        self.rows.append(row)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        pass


def read_losses(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``losses.csv`` as floats (empty fields omitted)."""
    with (Path(run_dir) / "losses.csv").open() as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
