"""medgan: medical-imaging domain translation (shape-consistent 3D CycleGAN for CT <-> MR) on MONAI.

Axis convention: tensors are channel first, ``(B, C, D, H, W)``, with the spatial axes in RAS
voxel order after MONAI ``Orientation("RAS")`` (D: left->right, H: posterior->anterior,
W: inferior->superior); see :mod:`medgan.data.transforms`.

The public API (imported lazily, so ``import medgan`` stays light):

- :class:`CycleGANConfig`, :func:`load_config` - the pipeline config schema and its loader;
- :func:`train`, :class:`CycleGANTrainer` - training;
- :class:`Translator`, :func:`translate` - whole-volume translation of files or tensors;
  :func:`open_translator` - the translator of a CycleGAN or paired checkpoint;
- :class:`PairedConfig`, :class:`PairedTrainer`, :class:`PairedTranslator` - paired pix2pix / regression;
- :func:`evaluate` - shape preservation (Dice), per-organ HU statistics, SynthRAD2025 MAE/PSNR/MS-SSIM (``evaluate_set`` for test sets);
- :func:`read_volume`, :func:`write_nifti` - I/O with geometry.
"""

from __future__ import annotations

__version__ = "0.16.0"

_API = {
    "CycleGANConfig": "medgan.pipelines.cyclegan.config",
    "CycleGANTrainer": "medgan.pipelines.cyclegan.trainer",
    "train": "medgan.pipelines.cyclegan.trainer",
    "Translator": "medgan.pipelines.cyclegan.translate",
    "translate": "medgan.pipelines.cyclegan.translate",
    "open_translator": "medgan.pipelines.cyclegan.translate",
    "PairedConfig": "medgan.pipelines.paired.config",
    "PairedTrainer": "medgan.pipelines.paired.trainer",
    "PairedTranslator": "medgan.pipelines.paired.translate",
    "evaluate": "medgan.pipelines.cyclegan.evaluate",
    "evaluate_set": "medgan.pipelines.cyclegan.evaluate",
    "read_cases": "medgan.pipelines.cyclegan.evaluate",
    "run_benchmark": "medgan.pipelines.benchmark.run",
    "load_config": "medgan.config",
    "read_volume": "medgan.io",
    "write_nifti": "medgan.io",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):  # noqa: ANN202 - lazy public API
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'medgan' has no attribute {name!r}")
