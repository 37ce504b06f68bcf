"""Whole-volume translation with a trained shape-consistent CycleGAN.

``Translator`` loads a checkpoint once. A volume goes to the training frame (RAS, training
spacing, [-1, 1]), through the generator in Gaussian-blended sliding windows, back to physical
units with the target domain's saved scaling (HU for a synthetic CT; the training MRs' scale for
a synthetic MR), and is resampled onto the input's own grid: the output has exactly the input's
shape and affine, whatever its orientation or format.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

import medgan
from medgan.checkpoint import CONFIG, load_networks, read_meta, resolve_checkpoint
from medgan.data.intensity import IntensityScaling
from medgan.data.transforms import DomainPreprocessor, to_input_grid
from medgan.inference import sliding_window
from medgan.io import Volume, atomic_write_text, expand_inputs, read_volume, strip_image_suffix, write_nifti
from medgan.utils import resolve_device
from pipelines.cyclegan.config import CycleGANConfig
from pipelines.cyclegan.model import PIPELINE, NetNames, build_networks
from pipelines.cyclegan.trainer import domain_preprocessor

logger = logging.getLogger(__name__)


@dataclass
class Translated:
    """A translated volume on its input's grid: ``image (I, J, K)`` float32 in the target's units
    (HU for CT), ``labels (I, J, K)`` uint8 class indices or ``None``, ``affine`` (RAS, mm)."""

    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class BatchReport:
    """Outcome of a batch: written files per input, and the inputs that failed with why."""

    written: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class Translator:
    """A trained CycleGAN, loaded once, translating volumes in either direction.

    Args:
        checkpoint: checkpoint folder, or a run folder (its newest checkpoint is used).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda:N"``.

    Raises:
        CheckpointError: not a CycleGAN checkpoint, or weights that do not fit its config.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        self.folder = resolve_checkpoint(checkpoint)
        self.meta = read_meta(self.folder, PIPELINE)
        self.config = CycleGANConfig.model_validate(yaml.safe_load((self.folder / CONFIG).read_text()))
        self.names = NetNames.of(self.config)
        self.device = resolve_device(device)
        self.nets = build_networks(self.config)
        load_networks(self.folder, dict(self.nets.items()))
        self.nets.to(self.device).eval()
        self.scaling = {
            name: IntensityScaling(v["lower"], v["upper"]) for name, v in self.meta["normalization"].items()
        }
        self._pre = {d.name: domain_preprocessor(self.config, d) for d in (self.config.domain_a, self.config.domain_b)}

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def parse_direction(self, direction: str) -> tuple[str, str]:
        """``"mr2ct"`` -> ``("MR", "CT")`` (domain names as configured, case-insensitive)."""
        a, b = self.names.a, self.names.b
        d = direction.lower().replace("->", "2").replace("_to_", "2")
        if d == f"{a}2{b}".lower():
            return a, b
        if d == f"{b}2{a}".lower():
            return b, a
        raise ValueError(f"unknown direction {direction!r}; this model translates {a.lower()}2{b.lower()} or {b.lower()}2{a.lower()}")

    def preprocessor(self, domain: str) -> DomainPreprocessor:
        return self._pre[domain]

    def _window(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        inf = self.config.inference
        return sliding_window(net, x, self.config.roi_size, inf.overlap, inf.sw_batch_size, inf.blend, device=self.device)

    def translate_tensor(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``x (B, 1, D, H, W)`` in [-1, 1] (source scaling, training spacing) -> ``(B, 1, D, H, W)``
        in [-1, 1] of the target domain. Any spatial size (sliding windows)."""
        src, tgt = self.parse_direction(direction)
        return self._window(self.nets[self.names.generator(src, tgt)], x)

    def segment_tensor(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """``x (B, 1, D, H, W)`` in [-1, 1] of ``domain`` -> class indices ``(B, D, H, W)`` by S_domain."""
        if not self.classes:
            raise ValueError(f"{self.folder}: this model has no segmenters (no classes configured)")
        return self._window(self.nets[f"S_{domain}"], x).argmax(1)

    def translate_volume(self, volume: Volume, direction: str, segment: bool = False) -> Translated:
        """Translate one volume; the result is on ``volume``'s grid (shape and affine)."""
        src, tgt = self.parse_direction(direction)
        image, _ = self._pre[src].image(volume)
        canonical_affine = image.affine
        y = self.translate_tensor(image.as_tensor()[None], direction)[0]
        out = self.scaling[tgt].inverse(to_input_grid(y, canonical_affine, volume.affine, volume.array.shape, "bilinear")[0])
        labels = None
        if segment:
            seg = self.segment_tensor(y[None], tgt)[0][None].float()
            labels = to_input_grid(seg, canonical_affine, volume.affine, volume.array.shape, "nearest")[0].round().astype(np.uint8)
        return Translated(image=out.astype(np.float32), affine=volume.affine, labels=labels)

    def segment_volume(self, volume: Volume, domain: str) -> np.ndarray:
        """Class indices ``(I, J, K)`` uint8 of a volume of ``domain`` by S_domain, on its grid."""
        image, _ = self._pre[domain].image(volume)
        seg = self.segment_tensor(image.as_tensor()[None], domain)[0][None].float()
        return to_input_grid(seg, image.affine, volume.affine, volume.array.shape, "nearest")[0].round().astype(np.uint8)

    def translate_file(self, path: str | Path, output_dir: str | Path, direction: str, segment: bool = False) -> list[Path]:
        """Read, translate and write ``{stem}_{direction}.nii.gz`` (+ ``_seg`` and a JSON sidecar)."""
        t0 = time.perf_counter()
        vol = read_volume(path)
        res = self.translate_volume(vol, direction, segment)
        stem = f"{strip_image_suffix(Path(path))}_{direction.lower()}"
        out = Path(output_dir)
        written = [write_nifti(out / f"{stem}.nii.gz", res.image, res.affine, dtype=np.float32)]
        if res.labels is not None:
            written.append(write_nifti(out / f"{stem}_seg.nii.gz", res.labels, res.affine, dtype=np.uint8))
        src, tgt = self.parse_direction(direction)
        sidecar = {
            "input": str(Path(path).resolve()),
            "checkpoint": str(self.folder.resolve()),
            "direction": f"{src}->{tgt}",
            "medgan_version": medgan.__version__,
            "units": "HU" if self.config.domain(tgt).intensity.kind == "window" else f"{tgt} training scale",
            "target_range": [self.scaling[tgt].lower, self.scaling[tgt].upper],
            "classes": ["background", *self.classes] if res.labels is not None else None,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        written.append(atomic_write_text(out / f"{stem}.json", json.dumps(sidecar, indent=2)))
        return written


def translate(
    checkpoint: str | Path, inputs: list[str | Path], output_dir: str | Path, direction: str,
    segment: bool = False, device: str = "auto", on_result=None,  # noqa: ANN001
) -> BatchReport:
    """Translate every volume named by ``inputs`` (files, folders, globs, DICOM folders).

    A file that fails is logged and recorded in the report; the batch goes on. ``on_result``
    (optional) is called as ``on_result(path, written_or_None, error_or_None)`` after each input.
    """
    translator = Translator(checkpoint, device)
    translator.parse_direction(direction)
    report = BatchReport()
    for path in expand_inputs(list(inputs)):
        try:
            written = translator.translate_file(path, output_dir, direction, segment)
        except Exception as err:  # one bad scan must not stop a study
            msg = str(err) if str(path) in str(err) else f"{path}: {err}"
            logger.error("failed: %s", msg)
            report.failed[str(path)] = msg
            if on_result:
                on_result(path, None, msg)
            continue
        report.written[str(path)] = [str(w) for w in written]
        if on_result:
            on_result(path, written, None)
    return report
