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

from medgan.checkpoint import load_networks, open_checkpoint
from medgan.data.intensity import IntensityScaling
from medgan.inference import inference_device
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
        self.folder, self.meta, self.config = open_checkpoint(checkpoint, PIPELINE, PairedConfig)
        self.names = NetNames(self.config.source.name, self.config.target.name)
        self.method = METHODS[self.config.model]
        self.device = inference_device(device)
        self.nets = build_networks(self.config)
        load_networks(self.folder, dict(self.nets.items()))
        self.nets.to(self.device).eval()
        self.scaling = {name: IntensityScaling(v["lower"], v["upper"]) for name, v in self.meta["normalization"].items()}
        self._pre = {d.name: paired_preprocessor(self.config, d) for d in (self.config.source, self.config.target)}

    def parse_direction(self, direction: str) -> tuple[str, str]:
        a, b = self.names.a, self.names.b
        d = direction.lower().replace("->", "2").replace("_to_", "2")
        if d == f"{a}2{b}".lower():
            return a, b
        raise ValueError(f"unknown direction {direction!r}; this paired model translates {a.lower()}2{b.lower()} only")
