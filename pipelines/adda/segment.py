"""Segmentation with an ADDA checkpoint, batch segmentation of scans, and the standard
domain-adaptation table (Dice per class on labelled target scans for no adaptation, ADDA and the
supervised upper bound)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medgan.batch import MAX_VOXELS, BatchReport, plan_jobs, rank_device, run_batch
from medgan.checkpoint import WEIGHTS, load_networks, open_checkpoint
from medgan.data.transforms import labels_to_input_grid
from medgan.inference import inference_device, sliding_window, tta_probabilities
from medgan.io import Grid, Volume, read_label_map, read_volume, sha256_of
from medgan.metrics import dice_per_class
from medgan.pipelines.adda.config import AddaConfig
from medgan.pipelines.adda.trainer import PIPELINE, build_adda_networks
from medgan.pipelines.data_config import SegmentationTTAConfig, domain_preprocessor

Encoder = Literal["source", "adapted", "oracle"]
ROWS = {"source": "no adaptation (E_src + H)", "adapted": "ADDA (E_tgt + H)", "oracle": "supervised upper bound (target labels)"}


class AddaSegmenter:
    """An ADDA checkpoint, loaded once. ``encoder``: ``"adapted"`` (E_tgt + H, for target scans),
    ``"source"`` (E_src + H, for source scans or the no-adaptation baseline) or ``"oracle"``."""

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        self.folder, self.meta, self.config = open_checkpoint(checkpoint, PIPELINE, AddaConfig)
        self.device = inference_device(device)
        self.nets = build_adda_networks(self.config)
        load_networks(self.folder, dict(self.nets.items()))
        self.nets.to(self.device).eval()
        sp = self.config.train.spacing_mm
        self.pre = {d.name: domain_preprocessor(d, sp, self.config.classes) for d in (self.config.source, self.config.target)}

    @property
    def classes(self) -> list[str]:
        return list(self.config.classes)

    def network(self, encoder: Encoder) -> torch.nn.Module:
        names = {"source": ("E_src", "H"), "adapted": ("E_tgt", "H"), "oracle": ("E_oracle", "H_oracle")}[encoder]
        if names[0] not in self.nets:
            raise ValueError(f"{self.folder}: this checkpoint has no {encoder} encoder (oracle stage disabled?)")
        enc, head = self.nets[names[0]], self.nets[names[1]]
        return torch.nn.Sequential(enc, head)

    def tta_views(self, domain: str | None = None, tta: SegmentationTTAConfig | None = None):  # noqa: ANN201
        """The :class:`~medgan.data.augment.SegmentationTTA` of ``tta`` (default: the config's
        ``inference.seg_tta``) for scans of ``domain`` (default: the target), or ``None`` when off.

        Raises:
            ValueError: views asked for on a domain trained without augmentation.
        """
        side = self.config.source if domain == self.config.source.name else self.config.target
        return (tta or self.config.inference.seg_tta).augment(side.augment, side.name)

    def segment_tensor(self, x: torch.Tensor, encoder: Encoder = "adapted", domain: str | None = None,
                       tta: SegmentationTTAConfig | None = None) -> torch.Tensor:
        """``x (B, 1, D, H, W)`` in [-1, 1] of ``domain`` (default: the target) -> class indices
        ``(B, D, H, W)``; ``tta`` (default: the config's ``inference.seg_tta``): test-time
        augmentation drawn from that domain's training augmentation.

        Raises:
            ValueError: test-time augmentation asked for on a domain trained without augmentation.
        """
        inf = self.config.inference
        augment = self.tta_views(domain, tta)
        net = self.network(encoder)
        return tta_probabilities(lambda v: sliding_window(net, v, self.config.roi_size, inf.overlap, inf.sw_batch_size, inf.blend,
                                                          device=self.device, precision=inf.precision).softmax(1),
                                 x, augment).argmax(1)

    def segment_volume(self, volume: Volume, encoder: Encoder = "adapted", domain: str | None = None,
                       largest_component: bool = False, tta: SegmentationTTAConfig | None = None) -> np.ndarray:
        """Class indices ``(I, J, K)`` uint8 on ``volume``'s grid; intensities are scaled as the
        ``domain`` (default: the target domain) was in training; ``largest_component``: each class
        keeps only its largest connected component on that grid (for one-organ classes); ``tta``:
        see :meth:`segment_tensor`."""
        domain = domain or self.config.target.name
        image, _ = self.pre[domain].image(volume)
        seg = self.segment_tensor(image.as_tensor()[None], encoder, domain, tta)[0]
        return labels_to_input_grid(seg, image.affine, volume.affine, volume.array.shape,
                                    largest_component_of=len(self.classes) if largest_component else 0)


class AddaSegmentTask:
    """:class:`medgan.batch.VolumeTask` writing ``{stem}_adda_seg.nii.gz`` class-index maps."""

    def __init__(self, model: AddaSegmenter, encoder: Encoder = "adapted", domain: str | None = None,
                 largest_component: bool = False, tta: SegmentationTTAConfig | None = None) -> None:
        self.model, self.encoder, self.largest_component = model, encoder, largest_component
        self.domain = domain or model.config.target.name
        self.tta = tta if tta is not None and tta.passes > 1 else None
        self.name = "adda_seg" if encoder == "adapted" else f"adda_{encoder}_seg"
        self.device = model.device

    def prepare(self, volume: Volume):  # noqa: ANN201
        return self.model.pre[self.domain].image(volume)[0]

    def run(self, image) -> torch.Tensor:  # noqa: ANN001
        return self.model.segment_tensor(image.as_tensor()[None], self.encoder, self.domain, self.tta)[0]

    def finish(self, grid: Grid, image, seg) -> dict[str, tuple[np.ndarray, type]]:  # noqa: ANN001
        return {"": (labels_to_input_grid(seg, image.affine, grid.affine, grid.shape,
                                          largest_component_of=len(self.model.classes) if self.largest_component else 0), np.uint8)}

    def provenance(self) -> dict:
        return {"checkpoint": str(self.model.folder.resolve()), "checkpoint_sha256": sha256_of(self.model.folder / WEIGHTS),
                "config": self.model.config.model_dump(mode="json"), "encoder": self.encoder, "domain": self.domain,
                "classes": ["background", *self.model.classes],
                **({"largest_component": True} if self.largest_component else {}),  # absent when off: earlier manifests resume
                **({"seg_tta": self.tta.model_dump()} if self.tta else {})}


def segment(checkpoint: str | Path, inputs: list[str | Path], output_dir: str | Path, encoder: Encoder = "adapted",
            domain: str | None = None, device: str = "auto", on_result=None, prefetch: int = 2,  # noqa: ANN001
            workers: int | None = None, max_voxels: int | None = MAX_VOXELS, largest_component: bool = False,
            tta: int = 1) -> BatchReport:
    """Segment every scan named by ``inputs``; same guarantees as ``medgan translate`` (input grid,
    manifest and resume, bad files reported and skipped, sharding under torchrun).
    ``largest_component``: each class keeps only its largest connected component (for one-organ classes).
    ``tta`` > 1: test-time augmentation over that many views (:class:`SegmentationTTAConfig`, drawn
    from the domain's training augmentation).

    Raises:
        ValueError: ``tta`` views asked for on a domain trained without augmentation.
    """
    model = AddaSegmenter(checkpoint, rank_device(device))
    seg_tta = SegmentationTTAConfig(passes=tta)
    model.tta_views(domain, seg_tta)  # refuse before any scan is read
    return run_batch(AddaSegmentTask(model, encoder, domain, largest_component, seg_tta), plan_jobs(list(inputs)), output_dir, prefetch=prefetch,
                     workers=workers, max_voxels=max_voxels, on_result=on_result)  # rank and world from torchrun


def evaluate_adda(checkpoint: str | Path, images: list[str | Path], labels: list[str | Path], device: str = "auto") -> dict:
    """Dice per class on labelled target scans for each available row (no adaptation, ADDA,
    supervised upper bound); the mean over scans per class, and each row's mean over classes."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label maps")
    model = AddaSegmenter(checkpoint, device)
    mapper = model.pre[model.config.target.name].label_mapper
    rows: dict[str, dict[str, float]] = {}
    for enc in ("source", "adapted", "oracle"):
        try:
            model.network(enc)  # type: ignore[arg-type]
        except ValueError:
            continue
        per_scan = []
        for img, lab in zip(images, labels):
            vol = read_volume(img)
            raw = read_label_map(lab, vol)
            per_scan.append(dice_per_class(model.segment_volume(vol, enc), mapper(raw.array, raw.path), model.classes))  # type: ignore[arg-type]
        rows[ROWS[enc]] = {c: float(np.nanmean([d[c] for d in per_scan])) if any(not math.isnan(d[c]) for d in per_scan) else float("nan")
                           for c in model.classes}
    return {"checkpoint": str(model.folder), "scans": [str(i) for i in images], "dice": rows,
            "mean": {r: float(np.nanmean(list(v.values()))) for r, v in rows.items()}}
