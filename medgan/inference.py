"""Whole-volume inference with MONAI's sliding-window inferer (no hidden state)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer


def sliding_window(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    blend: str = "gaussian",
    pad_value: float = -1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run ``network`` over ``x (B, C, D, H, W)`` in windows of ``roi_size`` voxels, blended with
    a Gaussian weight so patch seams do not show; returns ``(B, C_out, D, H, W)`` on ``x``'s device.

    Windows run on ``device`` (default: the network's) under ``torch.inference_mode`` and, on
    CUDA, bfloat16 autocast. A volume smaller than ``roi_size`` is padded with ``pad_value``
    (-1 is background in the [-1, 1] scaling).
    """
    if device is None:
        params = getattr(network, "parameters", None)
        device = next(params()).device if params is not None else x.device
    device = torch.device(device)
    inferer = SlidingWindowInferer(
        roi_size=tuple(int(r) for r in roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=blend,
        padding_mode="constant", cval=pad_value, sw_device=device, device=x.device,
    )
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        y = inferer(x, lambda w: network(w).float())
    return y.as_tensor() if hasattr(y, "as_tensor") else y
