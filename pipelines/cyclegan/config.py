"""Config schema of the shape-consistent CycleGAN pipeline: every default lives here.

Two domains, A and B (``domain_a.name: CT``, ``domain_b.name: MR`` for CT <-> MR; any two
modalities work). Networks are named after them: G_CT2MR, G_MR2CT, D_CT, D_MR, S_CT, S_MR.
Paths are relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medgan.data.datalist import datalist_from_folder, datalist_from_msd
from medgan.data.labels import LabelMapper
from medgan.losses.adversarial import GANMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntensityConfig(_Strict):
    """``window``: fixed range in the modality's units (HU for CT); ``percentile``: per-volume
    percentiles (in %) of arbitrary-unit MR."""

    kind: Literal["window", "percentile"] = "window"
    window: tuple[float, float] = (-1024.0, 2000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)


class LabelConfig(_Strict):
    """How this domain's label maps encode the shared ``classes``: explicit ``ids`` per class, or
    a class-map JSON (``classmap``) with a label ``space`` and optional ``groups`` table."""

    ids: dict[str, list[int]] | None = None
    classmap: Path | None = None
    space: str | None = None
    groups: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LabelConfig:
        if (self.ids is None) == (self.classmap is None):
            raise ValueError("give exactly one of labels.ids or labels.classmap (+ labels.space)")
        if self.classmap is not None and self.space is None:
            raise ValueError("labels.classmap needs labels.space (e.g. 'total' or 'total_mr')")
        return self

    def mapper(self, classes: list[str]) -> LabelMapper:
        if self.ids is not None:
            return LabelMapper(classes, self.ids, {i for ids in self.ids.values() for i in ids})
        return LabelMapper.from_classmap(classes, self.classmap, self.space, self.groups)  # type: ignore[arg-type]


class DataSource(_Strict):
    """Exactly one of ``folder`` (+ ``label_suffix``/``labels_folder``), ``msd`` (dataset.json,
    + ``section``/``include`` glob) or ``files`` (``[{image, label}]``)."""

    folder: Path | None = None
    label_suffix: str = "_labels"
    labels_folder: Path | None = None
    msd: Path | None = None
    section: str = "training"
    include: str | None = None
    files: list[dict[str, str | None]] | None = None

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


class DomainConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$", description="short modality name used in network names, e.g. CT")
    intensity: IntensityConfig = IntensityConfig()
    labels: LabelConfig | None = None
    data: DataSource


class NetworkConfig(_Strict):
    generator: Literal["resnet", "unet"] = "resnet"
    ngf: int = Field(16, ge=1, description="first-layer channels of the ResNet generator")
    n_res_blocks: int = Field(6, ge=0)
    unet_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    ndf: int = Field(32, ge=1, description="first-layer channels of the PatchGAN")
    d_layers: int = Field(3, ge=1)
    seg_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)


class LossConfig(_Strict):
    gan_mode: GANMode = "lsgan"
    lambda_cycle: float = Field(10.0, ge=0)
    lambda_identity: float = Field(0.0, ge=0, description="weight of |G_B2A(x_A) - x_A|_1; 0 for CT<->MR")
    lambda_shape: float = Field(1.0, ge=0, description="shape-consistency weight on the generators")
    lambda_seg_fake: float = Field(1.0, ge=0, description="weight of segmenter training on translated volumes")
    shape_warmup_iters: int = Field(0, ge=0, description="iterations of segmenter training before the shape and translated-segmentation terms start")


class OptimConfig(_Strict):
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    n_iters: int = Field(1000, ge=1)
    decay_start: int | None = Field(None, ge=0, description="iteration where the linear decay to 0 begins; default n_iters // 2")


class TrainConfig(_Strict):
    seed: int = 0
    batch_size: int = Field(1, ge=1)
    patch_size: tuple[int, int, int] = Field((64, 64, 32), description="voxels, D x H x W in RAS order")
    spacing_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    pool_size: int = Field(50, ge=0)
    crop_pos: float = Field(2.0, ge=0, description="weight of patches centred on labelled anatomy")
    crop_neg: float = Field(1.0, ge=0)
    num_workers: int = Field(0, ge=0)
    device: str = "auto"
    amp: bool = Field(True, description="bfloat16 autocast on CUDA; ignored on CPU")
    output_dir: Path = Path("runs/cyclegan")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    png_every: int = Field(250, ge=1)


class InferenceConfig(_Strict):
    roi_size: tuple[int, int, int] | None = Field(None, description="sliding-window size in voxels; default: the patch size")
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(2, ge=1)
    blend: Literal["gaussian", "constant"] = "gaussian"


class CycleGANConfig(_Strict):
    """Shape-consistent CycleGAN (Zhu et al. 2017; Zhang, Yang & Zheng, CVPR 2018)."""

    classes: list[str] = Field(default_factory=list, description="shared class names; empty = no segmenters")
    domain_a: DomainConfig
    domain_b: DomainConfig
    network: NetworkConfig = NetworkConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _check(self) -> CycleGANConfig:
        if self.domain_a.name == self.domain_b.name:
            raise ValueError("domain_a.name and domain_b.name must differ")
        if self.classes:
            for d in (self.domain_a, self.domain_b):
                if d.labels is None:
                    raise ValueError(f"classes are set, so domain {d.name} needs a labels section")
        if self.optim.decay_start is not None and self.optim.decay_start > self.optim.n_iters:
            raise ValueError("optim.decay_start must not exceed optim.n_iters")
        return self

    def domain(self, name: str) -> DomainConfig:
        for d in (self.domain_a, self.domain_b):
            if d.name.lower() == name.lower():
                return d
        raise ValueError(f"no domain {name!r}; this model has {self.domain_a.name} and {self.domain_b.name}")

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.inference.roi_size or self.train.patch_size
