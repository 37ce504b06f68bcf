"""Whole-volume translation with a trained shape-consistent CycleGAN.

``Translator`` loads a checkpoint once. A volume goes to the training frame (RAS, training
spacing, [-1, 1]), through the generator in Gaussian-blended sliding windows, back to physical
units with the target domain's saved scaling (HU for a synthetic CT; the training MRs' scale for
a synthetic MR), and is resampled onto the input's own grid: the output has exactly the input's
shape and affine, whatever its orientation or format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

import medgan
from medgan.batch import MAX_VOXELS, BatchReport, done_sidecars, plan_jobs, rank_device, run_batch
from medgan.checkpoint import WEIGHTS, checkpoint_pipeline, load_networks, open_checkpoint
from medgan.data.intensity import IntensityScaling
from medgan.data.transforms import DomainPreprocessor, labels_to_input_grid, to_input_grid
from medgan.inference import inference_device, sliding_window, tta_probabilities
from medgan.io import Grid, Volume, VolumeError, sha256_of
from medgan.io.dicom_write import DicomOutput, StudyIdentifiers
from medgan.pipelines.cyclegan.config import CycleGANConfig
from medgan.pipelines.cyclegan.model import PIPELINE, NetNames, build_networks
from medgan.pipelines.cyclegan.trainer import domain_preprocessor
from medgan.pipelines.data_config import SegmentationTTAConfig
from medgan.qa import scan_qa, write_batch_page

AIR_HU = -1000.0
"""What a synthetic CT holds outside the MR's body mask (``inference.air_outside_body``)."""

#: test-time augmentation: flips of the (B, C, D, H, W) tensor's spatial axes, in the order used
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@dataclass
class Translated:
    """A translated volume on its input's grid: ``image (I, J, K)`` float32 in the target's units
    (HU for CT), ``labels (I, J, K)`` uint8 class indices or ``None``, ``affine`` (RAS, mm)."""

    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray | None = None


class Translator:
    """A trained CycleGAN, loaded once, translating volumes in either direction.

    Args:
        checkpoint: checkpoint folder, or a run folder (its newest checkpoint is used).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda:N"``.

    Raises:
        CheckpointError: not a CycleGAN checkpoint, or weights that do not fit its config.
    """

    #: what the DICOM derivation and reports name as the method
    method = "CycleGAN, Zhu et al. 2017"

    def __init__(self, checkpoint: str | Path, device: str = "auto") -> None:
        folder, meta, config = open_checkpoint(checkpoint, PIPELINE, CycleGANConfig)
        self._load(folder, meta, config, NetNames.of(config), build_networks(config), device,
                   {d.name: domain_preprocessor(config, d) for d in (config.domain_a, config.domain_b)})

    def _load(self, folder: Path, meta: dict, config, names: NetNames, nets: torch.nn.ModuleDict, device: str,  # noqa: ANN001
              preprocessors: dict[str, DomainPreprocessor]) -> None:
        """Weights into ``nets`` on the device, the domains' saved intensity scalings: what every
        translator (CycleGAN, paired) sets up the same way."""
        self.folder, self.meta, self.config, self.names = folder, meta, config, names
        self.device = inference_device(device)
        self.nets = nets
        load_networks(self.folder, dict(self.nets.items()))
        self.nets.to(self.device).eval()
        self.scaling = {
            name: IntensityScaling.from_dict(v) for name, v in self.meta["normalization"].items()
        }
        self._pre = preprocessors

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
        return sliding_window(net, x, self.config.roi_size, inf.overlap, inf.sw_batch_size, inf.blend, device=self.device,
                              precision=inf.precision)

    def translate_tensor(self, x: torch.Tensor, direction: str) -> torch.Tensor:
        """``x (B, 1, D, H, W)`` in [-1, 1] (source scaling, training spacing) -> ``(B, 1, D, H, W)``
        in [-1, 1] of the target domain. Any spatial size (sliding windows)."""
        src, tgt = self.parse_direction(direction)
        return self._window(self.nets[self.names.generator(src, tgt)], x)

    def segment_tensor(self, x: torch.Tensor, domain: str, tta: SegmentationTTAConfig | None = None) -> torch.Tensor:
        """``x (B, 1, D, H, W)`` in [-1, 1] of ``domain`` -> class indices ``(B, D, H, W)`` by S_domain;
        ``tta`` (default: the config's ``inference.seg_tta``): test-time augmentation drawn from
        that domain's training augmentation.

        Raises:
            ValueError: a model without segmenters, or test-time augmentation asked for on a
                domain trained without augmentation.
        """
        if not self.classes:
            raise ValueError(f"{self.folder}: this model has no segmenters (no classes configured)")
        augment = (tta or self.config.inference.seg_tta).augment(self.config.domain(domain).augment, domain)
        net = self.nets[f"S_{domain}"]
        return tta_probabilities(lambda v: self._window(net, v).softmax(1), x, augment).argmax(1)

    def translate_volume(self, volume: Volume, direction: str, segment: bool = False) -> Translated:
        """Translate one volume; the result is on ``volume``'s grid (shape and affine)."""
        task = self.task(direction, segment)
        prepared = task.prepare(volume)
        arrays = task.finish(volume.grid, prepared, task.run(prepared))
        return Translated(image=arrays[""][0], affine=volume.affine, labels=arrays["_seg"][0] if "_seg" in arrays else None)

    def segment_volume(self, volume: Volume, domain: str, largest_component: bool = False,
                       tta: SegmentationTTAConfig | None = None) -> np.ndarray:
        """Class indices ``(I, J, K)`` uint8 of a volume of ``domain`` by S_domain, on its grid;
        ``largest_component``: each class keeps only its largest connected component on that grid
        (:func:`medgan.data.transforms.labels_to_input_grid`; for one-organ classes); ``tta``: see
        :meth:`segment_tensor`."""
        image, _ = self._pre[domain].image(volume)
        seg = self.segment_tensor(image.as_tensor()[None], domain, tta)[0]
        return labels_to_input_grid(seg, image.affine, volume.affine, volume.array.shape,
                                    largest_component_of=len(self.classes) if largest_component else 0)

    def task(self, direction: str, segment: bool = False, tta: int = 0, qa: bool = False,
             largest_component: bool = False) -> CycleGANTask:
        """The batch task translating ``direction`` (see :func:`medgan.batch.run_batch`)."""
        return CycleGANTask(self, direction, segment, tta, qa, largest_component)

    def translate_file(self, path: str | Path, output_dir: str | Path, direction: str, segment: bool = False) -> list[Path]:
        """Read, translate and write ``{stem}_{direction}.nii.gz`` (+ ``_seg`` and a JSON sidecar).

        Raises:
            VolumeError, FileNotFoundError: unreadable input or unwritable output folder.
        """
        job = plan_jobs([path])[0]
        report = run_batch(self.task(direction, segment), [job], output_dir, prefetch=1, manifest=False, rank=0,
                           world_size=1, tune_allocator=False)  # a library call leaves the process as it was
        if report.failed:
            raise VolumeError(next(iter(report.failed.values())))
        return [Path(p) for p in next(iter(report.written.values()))]


def open_translator(checkpoint: str | Path, device: str = "auto") -> Translator:
    """The translator of a CycleGAN or a paired checkpoint, by the pipeline its ``meta.json`` names.

    Raises:
        CheckpointError: not a checkpoint of either, or damaged.
    """
    folder, pipeline = checkpoint_pipeline(checkpoint)
    if pipeline == "paired":
        from medgan.pipelines.paired.translate import PairedTranslator

        return PairedTranslator(folder, device)
    return Translator(folder, device)


@dataclass
class Prepared:
    """A scan prepared for the model: ``image (1, D, H, W)`` in [-1, 1] on the training grid,
    ``air_body`` the MR body mask outside which an sCT is air (or ``None``), and for the QA sheet
    the input's statistics and body mask (or ``None``)."""

    image: MetaTensor
    air_body: torch.Tensor | None
    stats: dict | None
    path: str
    stats_body: torch.Tensor | None


class CycleGANTask:
    """:class:`medgan.batch.VolumeTask` for one direction: prepare = to the training frame,
    run = generator (+ target segmenter) in sliding windows, finish = back to HU / MR units on
    the input's grid.

    ``tta`` >= 2: test-time augmentation over the first ``tta`` flips of :data:`TTA_FLIPS`
    (identity first): each flipped input is translated and flipped back, the output is their
    mean, and ``_std`` is the per-voxel standard deviation over them in the target's units (HU for
    a synthetic CT); with ``segment`` its mean inside each segmented class goes into the sidecar
    (``tta_std``). The segmenter runs on the mean.

    ``largest_component`` (with ``segment``): each class of the written label map keeps only its
    largest connected component on the input's grid (:func:`medgan.data.labels.keep_largest_components`;
    for one-organ classes). The sidecar's ``tta_std`` and the QA sheet use the map as predicted.

    ``qa``: a QA sheet per scan (:mod:`medgan.qa`): ``_qa.png`` and a ``qa`` entry in the sidecar
    (out-of-distribution, intensity and uncertainty warnings).

    Raises:
        ValueError: ``segment`` without segmenters, ``largest_component`` without ``segment``, or
            ``tta`` outside 0..8.
    """

    def __init__(self, translator: Translator, direction: str, segment: bool = False, tta: int = 0, qa: bool = False,
                 largest_component: bool = False) -> None:
        if largest_component and not segment:
            raise ValueError("--largest-component post-processes the segmentation: it needs --segment")
        self.tr, self.segment, self.qa, self.largest_component = translator, segment, qa, largest_component
        self.src, self.tgt = translator.parse_direction(direction)
        self.name = f"{self.src}2{self.tgt}".lower()
        self.device = translator.device
        if segment and not translator.classes:
            raise ValueError(f"{translator.folder}: --segment needs a model with segmenters (no classes configured)")
        if not 0 <= tta <= len(TTA_FLIPS):
            raise ValueError(f"--tta {tta}: use 0 (off) or 2..{len(TTA_FLIPS)} flips")
        self.tta = tta if tta >= 2 else 0

    @property
    def air_outside_body(self) -> bool:
        """A synthetic CT from an MR gets air (:data:`AIR_HU`) outside the MR's body mask."""
        cfg = self.tr.config
        return (cfg.inference.air_outside_body and cfg.domain(self.tgt).intensity.kind == "window"
                and cfg.domain(self.src).intensity.kind != "window")

    def prepare(self, volume: Volume) -> Prepared:
        pre = self.tr.preprocessor(self.src)
        image, _ = pre.image(volume)
        body = torch.from_numpy(pre.body_mask(image)) if self.air_outside_body or self.qa else None
        stats = pre.statistics(image, volume.grid, body.numpy()) if self.qa else None
        return Prepared(image, body if self.air_outside_body else None, stats, volume.path, body)

    def run(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = prepared.image.as_tensor()[None]
        direction = f"{self.src}2{self.tgt}"
        std = None
        if self.tta:
            ys = torch.stack([self.tr.translate_tensor(x.flip(f), direction).flip(f) if f else
                              self.tr.translate_tensor(x, direction) for f in TTA_FLIPS[:self.tta]])
            # mean and spread in the target's units (HU): the scaling may be piecewise linear
            scaling = self.tr.scaling[self.tgt]
            units = scaling.inverse(ys.float())
            y, std = scaling.forward(units.mean(0)), units.std(0, unbiased=False)
        else:
            y = self.tr.translate_tensor(x, direction)
        seg = self.tr.segment_tensor(y, self.tgt) if self.segment else None
        return y[0], (seg[0] if seg is not None else None), (std[0] if std is not None else None)

    def _units(self, prepared: Prepared, y: torch.Tensor) -> torch.Tensor:
        """The output ``(1, D, H, W)`` in the target's units (HU) on the model's grid, air outside the body."""
        units = self.tr.scaling[self.tgt].inverse(y.float())
        if prepared.air_body is not None:
            units[:, ~prepared.air_body] = AIR_HU
        return units

    def finish(self, grid: Grid, prepared: Prepared, result) -> dict[str, tuple[np.ndarray, type]]:  # noqa: ANN001
        (y, seg, std), image = result, prepared.image
        # invert on the small canonical tensor (exact, also for a piecewise-linear map), then
        # resample the HU once onto the (large) input grid
        units = self._units(prepared, y)
        out = {"": (to_input_grid(units, image.affine, grid.affine, grid.shape, "bilinear")[0], np.float32)}
        if seg is not None:
            out["_seg"] = (labels_to_input_grid(seg, image.affine, grid.affine, grid.shape, largest_component_of=
                                                len(self.tr.classes) if self.largest_component else 0), np.uint8)
        if std is not None:
            std_units = std.float().clone()
            if prepared.air_body is not None:
                std_units[:, ~prepared.air_body] = 0.0  # set to air in every pass
            out["_std"] = (to_input_grid(std_units, image.affine, grid.affine, grid.shape, "bilinear")[0], np.float32)
        return out

    def report(self, prepared: Prepared, result) -> tuple[dict, dict[str, bytes]]:  # noqa: ANN001
        """What the sidecar reports of this scan beyond the files, and extra files by suffix:
        with ``tta`` and ``segment``, the mean TTA standard deviation inside each segmented
        class (target units, on the model's grid, ``tta_std``); with ``qa``, the QA sheet's
        figures and warnings (``qa``) and its PNG (``_qa.png``, :func:`medgan.qa.scan_qa`)."""
        y, seg, std = result
        fields: dict = {}
        if std is not None:
            stats: dict = {"passes": self.tta, "flips": [list(f) for f in TTA_FLIPS[:self.tta]],
                           "mean_std_in_volume": round(float(std.float().mean()), 3)}
            if seg is not None:
                s = std[0].float()
                stats["mean_std_per_class"] = {
                    name: round(float(s[seg == c].mean()), 3) for c, name in enumerate(self.tr.classes, start=1)
                    if bool((seg == c).any())}
            fields["tta_std"] = stats
        if not self.qa:
            return fields, {}
        tgt_pre = self.tr.preprocessor(self.tgt)
        ct = tgt_pre.scaling_kind == "window"
        ts = self.tr.meta.get("training_stats") or {}
        units = self._units(prepared, y)[0].numpy()
        sheet = scan_qa(
            f"{Path(prepared.path).name}: {self.src} -> {self.tgt}", prepared.image[0].numpy(), units,
            prepared.stats_body.numpy(), self.tr.config.train.spacing_mm, prepared.stats,
            {"source": ts.get(self.src), "target": ts.get(self.tgt)} if ts else None,
            "HU" if ct else f"{self.tgt} training scale", tuple(tgt_pre.window) if ct else None,
            seg=seg.numpy() if seg is not None else None, classes=self.tr.classes,
            std=std[0].float().numpy() if std is not None else None)
        fields["qa"] = sheet.summary
        return fields, {"_qa.png": sheet.png}

    def provenance(self) -> dict:
        return {
            "checkpoint": str(self.tr.folder.resolve()),
            "checkpoint_sha256": sha256_of(self.tr.folder / WEIGHTS),
            "config": self.tr.config.model_dump(mode="json"),
            "direction": f"{self.src}->{self.tgt}",
            "units": "HU" if self.tr.config.domain(self.tgt).intensity.kind == "window" else f"{self.tgt} training scale",
            "target_range": [self.tr.scaling[self.tgt].lower, self.tr.scaling[self.tgt].upper],
            "classes": ["background", *self.tr.classes] if self.segment else None,
            **({"tta": self.tta} if self.tta else {}),  # absent when off: earlier manifests still resume
            **({"qa": True} if self.qa else {}),
            **({"largest_component": True} if self.largest_component else {}),
        }


def translate(
    checkpoint: str | Path, inputs: list[str | Path], output_dir: str | Path, direction: str,
    segment: bool = False, device: str = "auto", on_result=None,  # noqa: ANN001
    prefetch: int = 2, series_uid: str | None = None, series_description: str | None = None,
    workers: int | None = None, max_voxels: int | None = MAX_VOXELS, output_format: str = "nifti",
    study: StudyIdentifiers | None = None, tta: int = 0, qa: bool = False, largest_component: bool = False,
) -> BatchReport:
    """Translate every scan named by ``inputs`` (files, folders, globs, DICOM folders) into
    ``output_dir``, with a manifest; finished scans of an earlier run are skipped. Under
    ``torchrun`` each rank takes its share. A scan that fails is recorded and the batch goes on;
    ``on_result(job, written_or_None, error_or_None)`` is called after each scan.

    ``output_format="dicom"`` writes each synthetic CT as a DICOM CT series
    (``{stem}_mr2ct_dicom/``, see :func:`medgan.io.dicom_write.write_ct_series`) in the source
    MR's study and frame of reference; non-DICOM inputs need ``study``. ``qa`` writes a QA sheet
    per scan and ``qa.html`` for every scan of the folder (:mod:`medgan.qa`).
    ``largest_component`` (with ``segment``): see :class:`CycleGANTask`.

    Raises:
        ValueError: DICOM output of a direction whose target is not CT (HU), or an unknown format.
        VolumeError: DICOM output of non-DICOM inputs without ``study``.
    """
    translator = open_translator(checkpoint, rank_device(device))
    task = translator.task(direction, segment, tta, qa, largest_component)
    dicom = None
    if output_format == "dicom":
        if translator.config.domain(task.tgt).intensity.kind != "window":
            raise ValueError(f"--output-format dicom writes CT series in HU; {task.tgt} is not a CT domain of this model")
        dicom = DicomOutput(
            description=f"sCT medgan {medgan.__version__} {translator.folder.name}",
            derivation=(f"synthetic CT from {task.src} by medgan {medgan.__version__}: {task.src}->{task.tgt} generator of "
                        f"checkpoint {translator.folder.name} ({translator.method})"),
            study=study, classes=tuple(translator.classes) if segment else ())
    elif output_format != "nifti":
        raise ValueError(f"unknown output format {output_format!r}; use nifti or dicom")
    jobs = plan_jobs(list(inputs), series_uid, series_description)
    report = run_batch(task, jobs, output_dir, prefetch=prefetch, workers=workers, max_voxels=max_voxels,
                       on_result=on_result, dicom=dicom)  # rank and world from torchrun
    if qa:  # every scan of the folder this task made, resumed ones included
        report.qa_page = write_batch_page(output_dir, done_sidecars(output_dir, task.name), f"medgan QA: {task.src} -> {task.tgt}")
    return report
