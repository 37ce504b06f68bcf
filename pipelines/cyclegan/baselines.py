"""Baselines without learning, to put the CycleGAN's figures in context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.exposure import match_histograms

from medgan.io import read_volume, write_nifti


def histogram_match(source: str | Path, reference: str | Path, output: str | Path) -> Path:
    """Map ``source`` intensities (e.g. MR) onto ``reference``'s histogram (e.g. a real CT, HU),
    on the source's grid, with scikit-image ``match_histograms`` over the whole volumes.

    Writes a float32 NIfTI with the source's affine; returns its path.
    """
    src, ref = read_volume(source), read_volume(reference)
    out = match_histograms(src.array, ref.array).astype(np.float32)
    return write_nifti(output, out, src.affine, dtype=np.float32)


__all__ = ["histogram_match"]
