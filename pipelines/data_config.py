"""Config pieces shared by every pipeline: a domain's intensities, labels and data source."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medgan.config import InputPath, InputPaths
from medgan.data.datalist import datalist_from_folder, datalist_from_msd
from medgan.data.labels import LabelMapper
from medgan.data.transforms import DomainPreprocessor


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntensityConfig(_Strict):
    """``window``: fixed range in the modality's units (HU for CT), mapped linearly onto [-1, 1]
    or piecewise linearly through ``knots`` (``[[HU, unit], ...]``, e.g. ``[[-200, -0.6], [300,
    0.6]]`` stretches the soft tissues, :class:`medgan.data.intensity.IntensityScaling`);
    ``percentile``: per-volume percentiles (in %) of arbitrary-unit MR."""

    kind: Literal["window", "percentile"] = "window"
    window: tuple[float, float] = (-1024.0, 2000.0)
    knots: list[tuple[float, float]] = Field(default_factory=list, description="window only: interior (value, unit) pairs")
    percentiles: tuple[float, float] = (0.5, 99.5)

    @model_validator(mode="after")
    def _knots(self) -> IntensityConfig:
        if self.knots:
            from medgan.data.intensity import fit_scaling

            fit_scaling(None, self.kind, self.window, self.percentiles, tuple(self.knots))  # raises if invalid
        return self


class LabelConfig(_Strict):
    """How this domain's label maps encode the shared ``classes``: explicit ``ids`` per class (and
    ``known_ids``, the label space's other ids, read as background), or a class-map JSON
    (``classmap``) with a label ``space`` and optional ``groups`` table. A checkpoint stores the
    ids form (:meth:`inline`), so it needs no class-map file."""

    ids: dict[str, list[int]] | None = None
    known_ids: list[int] | None = Field(None, description="with ids: the label space's other ids (background)")
    classmap: InputPath | None = None
    space: str | None = None
    groups: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LabelConfig:
        if (self.ids is None) == (self.classmap is None):
            raise ValueError("give exactly one of labels.ids or labels.classmap (+ labels.space)")
        if self.classmap is not None and self.space is None:
            raise ValueError("labels.classmap needs labels.space (e.g. 'total' or 'total_mr')")
        if self.known_ids is not None and self.ids is None:
            raise ValueError("labels.known_ids goes with labels.ids")
        return self

    def mapper(self, classes: list[str]) -> LabelMapper:
        if self.ids is not None:
            known = {i for ids in self.ids.values() for i in ids} | set(self.known_ids or [])
            return LabelMapper(classes, self.ids, known)
        return LabelMapper.from_classmap(classes, self.classmap, self.space, self.groups)  # type: ignore[arg-type]

    def inline(self, classes: list[str]) -> LabelConfig:
        """The same mapping as explicit ids (the class map's tables read now)."""
        if self.ids is not None or not classes:
            return self
        m = self.mapper(classes)
        return LabelConfig(ids={c: list(m.class_ids[c]) for c in classes}, known_ids=sorted(m.known_ids - {0}))


class DataSource(_Strict):
    """Exactly one of ``folder`` (+ ``label_suffix``/``labels_folder``), ``msd`` (dataset.json,
    + ``section``/``include`` glob) or ``files`` (``[{image, label}]``)."""

    folder: InputPath | None = None
    label_suffix: str = "_labels"
    labels_folder: InputPath | None = None
    msd: InputPath | None = None
    section: str = "training"
    include: str | None = None
    files: InputPaths | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if sum(x is not None for x in (self.folder, self.msd, self.files)) != 1:
            raise ValueError("give exactly one of data.folder, data.msd or data.files")
        return self

    def datalist(self) -> list[dict[str, str | None]]:
        if self.folder is not None:
            return datalist_from_folder(self.folder, self.label_suffix, self.labels_folder)
        if self.msd is not None:
            return datalist_from_msd(self.msd, self.section, self.include)
        return [{"image": f["image"], "label": f.get("label")} for f in self.files or []]


class AugmentConfig(_Strict):
    """Training augmentation of one domain (:mod:`medgan.data.augment`); all off by default.

    Spatial (every network sees it; image and label together): ``rotate_deg`` (+- about each
    axis), ``scale`` (+- fraction, drawn per axis), applied with probability ``spatial_prob``. Intensity (the
    segmenters' inputs only, so translations keep their units): the probability of each of
    MONAI's ``RandBiasField``, ``RandHistogramShift``, ``RandGibbsNoise``, ``RandAdjustContrast``;
    ``synth``, the probability that a labelled segmenter input is replaced, before those, by an
    image synthesized from its label map (:class:`~medgan.data.augment.LabelSynthesis`, SynthSeg's
    domain randomization)."""

    rotate_deg: float = Field(0.0, ge=0, le=30)
    scale: float = Field(0.0, ge=0, lt=0.5)
    spatial_prob: float = Field(0.5, ge=0, le=1)
    bias_field: float = Field(0.0, ge=0, le=1)
    histogram_shift: float = Field(0.0, ge=0, le=1)
    gibbs: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, le=1)
    synth: float = Field(0.0, ge=0, le=1)

    def spatial(self, patch_size: tuple[int, int, int]):  # noqa: ANN201
        """The :class:`~medgan.data.augment.SpatialAugment` of these settings, or ``None`` when off."""
        from medgan.data.augment import SpatialAugment

        if (self.rotate_deg == 0 and self.scale == 0) or self.spatial_prob == 0:
            return None
        return SpatialAugment(patch_size, self.rotate_deg, self.scale, self.spatial_prob)

    def intensity(self):  # noqa: ANN201
        """The :class:`~medgan.data.augment.IntensityAugment` of these settings (``active`` False when off)."""
        from medgan.data.augment import IntensityAugment

        return IntensityAugment(self.bias_field, self.histogram_shift, self.gibbs, self.contrast)

    def synthesis(self):  # noqa: ANN201
        """The :class:`~medgan.data.augment.LabelSynthesis` of these settings, or ``None`` when off."""
        from medgan.data.augment import LabelSynthesis

        return LabelSynthesis(self.synth) if self.synth > 0 else None


class DomainConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", description="short modality name used in network names, e.g. CT")
    intensity: IntensityConfig = IntensityConfig()
    labels: LabelConfig | None = None
    data: DataSource
    augment: AugmentConfig = AugmentConfig()


class PipelineConfig(_Strict):
    """Base of every pipeline's config: :meth:`self_contained` is what a checkpoint stores."""

    def self_contained(self) -> PipelineConfig:
        """A copy with every domain's label table inline (see :meth:`LabelConfig.inline`); input
        paths are already absolute (:func:`medgan.config.load_config`)."""
        return _inline_labels(self, list(getattr(self, "classes", None) or []))


def _inline_labels(model: BaseModel, classes: list[str]) -> BaseModel:
    update = {}
    for name in type(model).model_fields:
        v = getattr(model, name)
        if isinstance(v, LabelConfig):
            update[name] = v.inline(classes)
        elif isinstance(v, BaseModel):
            update[name] = _inline_labels(v, classes)
    return model.model_copy(update=update)


class TrainBase(_Strict):
    """Training settings every pipeline has; each pipeline's train section extends it and may
    change a default (its own ``output_dir``, ...)."""

    seed: int = 0
    batch_size: int = Field(1, ge=1)
    patch_size: tuple[int, int, int] = Field((64, 64, 32), description="voxels, D x H x W in RAS order")
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    crop_pos: float = Field(2.0, ge=0, description="weight of patches centred on labelled anatomy")
    crop_neg: float = Field(1.0, ge=0)
    segmenter_patches: Literal["labelled", "any"] = Field(
        "labelled", description="stages that train only segmenters (ADDA's source and oracle stages, the CycleGAN's "
        "seg_pretrain/seg_finetune iterations) draw from the labelled volumes only; 'any': from every volume, as "
        "medgan <= 0.5 did (an unlabelled patch then gives no update)")
    device: str = "auto"
    output_dir: Path = Path("runs/medgan")
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    amp: bool = Field(True, description="bfloat16 autocast on CUDA and on CPUs with native bf16 (AVX-512 BF16 / AMX), "
                      "float32 elsewhere; 2-3x faster steps on such CPUs (benchmarks/bench_step.py)")
    channels_last: bool = Field(False, description="networks and patches in channels-last 3D memory order "
                                "(on a CPU with bf16: 1.3x faster for the demo's small networks, 1.2x slower for the "
                                "benchmark's; benchmarks/bench_step.py --nets demo|benchmark); ignored with several CPU ranks, where DDP "
                                "training in channels-last is not reproducible run to run")


class SegmentationTTAConfig(_Strict):
    """Test-time augmentation of the segmenters (:class:`medgan.data.augment.SegmentationTTA`):
    the softmax probabilities averaged over ``passes`` views of the whole volume (the volume
    itself first), the others drawn from the segmented domain's training augmentation (its
    ``augment``): its rotation and scaling when ``spatial``, its contrast perturbations when
    ``intensity``. ``passes`` 1 is off. Costs ``passes`` times the segmentation time.

    Spatial views only by default: on the CHAOS validation split (benchmarks/README.md, medgan
    0.14) 8 spatial views moved 6 models' mean Dice by -0.034 to +0.049 (5 up), contrast views 4
    models' by -0.014 to +0.041, and both together lowered the CT-trained segmenters' by 0.07-0.08."""

    passes: int = Field(1, ge=1, le=32)
    spatial: bool = True
    intensity: bool = False
    seed: int = 0

    def augment(self, domain_augment: AugmentConfig, domain: str):  # noqa: ANN201
        """The :class:`~medgan.data.augment.SegmentationTTA` for a domain trained with
        ``domain_augment``, or ``None`` when off.

        Raises:
            ValueError: views asked for, but the domain trained without what they would draw.
        """
        from medgan.data.augment import SegmentationTTA

        if self.passes == 1:
            return None
        a = domain_augment
        spatial = self.spatial and (a.rotate_deg > 0 or a.scale > 0) and a.spatial_prob > 0
        intensity = a.intensity() if self.intensity else None
        intensity = intensity if intensity is not None and intensity.active else None
        if not spatial and intensity is None:
            raise ValueError(f"seg_tta: {self.passes} passes on {domain}, but {domain} trained without the augmentation "
                             f"they would draw from (spatial={self.spatial}, intensity={self.intensity}; its augment: {a.model_dump()})")
        return SegmentationTTA(self.passes, a.rotate_deg if spatial else 0.0, a.scale if spatial else 0.0, intensity, self.seed)


class InferenceConfig(_Strict):
    """Sliding-window inference (MONAI ``SlidingWindowInferer``)."""

    roi_size: tuple[int, int, int] | None = Field(None, description="window size in voxels; default: the training patch size")
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int | None = Field(
        None, ge=1, description="windows per forward pass; default: 1 on CPU (fastest there), as many as fit in "
        "half the free memory on CUDA")
    blend: Literal["gaussian", "constant"] = "gaussian"
    air_outside_body: bool = Field(
        False, description="synthetic CT: voxels outside the source MR's body mask (medgan.data.masks.mr_body_mask: Otsu "
        "threshold, largest component, holes filled; on the training grid) are set to AIR_HU (-1000 HU), as the "
        "air around a patient in a CT. Off by default: on one fat-suppressed T2 abdominal MR the mask missed the body "
        "outline and made most of the liver air (benchmarks/README.md); check the mask on your protocol first")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="float32 (default) or bfloat16 autocast: faster on GPUs and AMX CPUs, but it moves "
        "a synthetic CT by up to 15-30 HU (mean 1-2 HU in the body; benchmarks/bench_precision.py, benchmarks/README.md)")
    seg_tta: SegmentationTTAConfig = Field(SegmentationTTAConfig(), description="test-time augmentation of the segmenters (off: passes 1)")


def domain_preprocessor(domain: DomainConfig, spacing_mm: tuple[float, float, float], classes: list[str]) -> DomainPreprocessor:
    """The preprocessing of one domain as configured (spacing, intensity, label mapping)."""
    return DomainPreprocessor(
        spacing_mm=spacing_mm,
        scaling_kind=domain.intensity.kind,
        window=domain.intensity.window,
        knots=tuple(tuple(k) for k in domain.intensity.knots),
        percentiles=domain.intensity.percentiles,
        label_mapper=domain.labels.mapper(classes) if (domain.labels and classes) else None,
    )
