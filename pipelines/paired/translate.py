"""Whole-volume translation with a trained paired model (pix2pix or regression).

:class:`PairedTranslator` is a :class:`~medgan.pipelines.cyclegan.translate.Translator` with one
direction: everything after loading (training frame, Gaussian-blended sliding windows, HU
restored, output resampled onto the input's own grid, batch engine, DICOM output, TTA, QA sheet)
is the CycleGAN's, so paired and unpaired models are run and scored the same way.
``medgan translate -c <paired run>`` picks it from the checkpoint
(:func:`~medgan.pipelines.cyclegan.translate.open_translator`).
"""

from __future__ import annotations

from pathlib import Path

from medgan.checkpoint import open_checkpoint
from medgan.pipelines.cyclegan.model import NetNames
from medgan.pipelines.cyclegan.translate import Translator
from medgan.pipelines.paired.config import PairedConfig
from medgan.pipelines.paired.model import PIPELINE, build_networks
from medgan.pipelines.paired.trainer import paired_preprocessor

METHODS = {"pix2pix": "pix2pix, Isola et al. 2017", "regression": "supervised regression, masked L1"}


class PairedTranslator(Translator):
    """A trained paired model, loaded once, translating ``source -> target`` (e.g. mr2ct).

    Raises:
        CheckpointError: not a paired checkpoint, or weights that do not fit its config.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:  # noqa: D107 - the Translator's contract
        folder, meta, config = open_checkpoint(checkpoint, PIPELINE, PairedConfig)
        self.method = METHODS[config.model]
        self._load(folder, meta, config, NetNames(config.source.name, config.target.name), build_networks(config), device,
                   {d.name: paired_preprocessor(config, d) for d in (config.source, config.target)})

    def parse_direction(self, direction: str) -> tuple[str, str]:
        a, b = self.names.a, self.names.b
        d = direction.lower().replace("->", "2").replace("_to_", "2")
        if d == f"{a}2{b}".lower():
            return a, b
        raise ValueError(f"unknown direction {direction!r}; this paired model translates {a.lower()}2{b.lower()} only")
