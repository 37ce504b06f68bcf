"""Invertible intensity scaling between physical units and the networks' [-1, 1] range.

MONAI's ``ScaleIntensityRanged`` / ``ScaleIntensityRangePercentilesd`` are not invertible
transforms (see PITFALLS.md), so the parameters are kept here, per volume and per model, and
undone by :meth:`IntensityScaling.inverse`; that is how a synthetic CT comes back in HU.

- ``window`` (CT): the HU window ``[lower, upper]`` maps linearly onto [-1, 1], values outside
  are clipped. The same window is used for every volume and for the output of a generator, so a
  synthetic CT spans exactly ``[lower, upper]`` HU.
- ``percentile`` (MR, arbitrary units): the ``p_low``/``p_high`` percentiles of each volume map
  onto [-1, 1] (robust to outliers and to large ``scl_slope`` values), clipped. A synthetic MR is
  written in the scale of the training MRs: the mean of their percentile values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

ScalingKind = Literal["window", "percentile"]


@dataclass(frozen=True)
class IntensityScaling:
    """Linear map ``[lower, upper]`` (physical units: HU for CT) <-> ``[-1, 1]``."""

    lower: float
    upper: float

    def __post_init__(self) -> None:
        if not self.upper > self.lower:
            raise ValueError(f"intensity range must have upper > lower, got [{self.lower}, {self.upper}]")

    def forward(self, x):  # noqa: ANN001, ANN201 - numpy array or torch tensor
        """Physical units -> [-1, 1], clipped."""
        y = (x - self.lower) / (self.upper - self.lower) * 2.0 - 1.0
        return y.clamp(-1.0, 1.0) if isinstance(y, torch.Tensor) else np.clip(y, -1.0, 1.0)

    def inverse(self, y):  # noqa: ANN001, ANN201
        """[-1, 1] -> physical units (exact inverse inside ``[lower, upper]``)."""
        return (y + 1.0) * 0.5 * (self.upper - self.lower) + self.lower

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_scaling(
    array: np.ndarray,
    kind: ScalingKind,
    window: tuple[float, float] = (-1024.0, 2000.0),
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> IntensityScaling:
    """The scaling for one volume: the fixed ``window`` or this volume's ``percentiles`` (in %)."""
    if kind == "window":
        return IntensityScaling(float(window[0]), float(window[1]))
    if kind == "percentile":
        lo, hi = np.percentile(array, percentiles)
        if not hi > lo:
            lo, hi = float(array.min()), float(array.max())
        return IntensityScaling(float(lo), float(hi))
    raise ValueError(f"unknown intensity scaling {kind!r}; expected 'window' or 'percentile'")


def mean_scaling(scalings: list[IntensityScaling]) -> IntensityScaling:
    """The model-level scaling of a domain: the mean of its training volumes' scalings."""
    if not scalings:
        raise ValueError("no volumes to average an intensity scaling over")
    return IntensityScaling(
        float(np.mean([s.lower for s in scalings])), float(np.mean([s.upper for s in scalings]))
    )
