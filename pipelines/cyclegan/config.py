"""Config schema of the shape-consistent CycleGAN pipeline: every default lives here.

Two domains, A and B (``domain_a.name: CT``, ``domain_b.name: MR`` for CT <-> MR; any two
modalities work). Networks are named after them: G_CT2MR, G_MR2CT, D_CT, D_MR, S_CT, S_MR.
Input paths in a YAML file are relative to its folder, output_dir to the working directory (medgan.config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medgan.losses.adversarial import GANMode
from medgan.pipelines.data_config import DataSource, DomainConfig, InferenceConfig, IntensityConfig, LabelConfig, PipelineConfig, TrainBase, _Strict

__all__ = ["CycleGANConfig", "DataSource", "DomainConfig", "InferenceConfig", "IntensityConfig", "LabelConfig"]


class NetworkConfig(_Strict):
    generator: Literal["resnet", "unet"] = "resnet"
    ngf: int = Field(16, ge=1, description="first-layer channels of the ResNet generator")
    n_res_blocks: int = Field(6, ge=0)
    unet_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    ndf: int = Field(32, ge=1, description="first-layer channels of the PatchGAN")
    d_layers: int = Field(3, ge=1)
    seg_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)


class LossConfig(_Strict):
    """Weights of the generator objective. The adversarial terms have weight 1 and, for
    ``lsgan``, are the squared error ``(D(G(x)) - 1)^2`` of Zhu et al. 2017 (sec. 4), so
    ``lambda_cycle = 10`` balances them as in the paper; the discriminators minimise half their
    objective, as the reference code. (medgan 0.1 computed half the squared error for both, so
    its lambdas acted twice as strongly against the adversarial term.)"""

    gan_mode: GANMode = "lsgan"
    lambda_cycle: float = Field(10.0, ge=0)
    lambda_identity: float = Field(0.0, ge=0, description="weight of |G_B2A(x_A) - x_A|_1; 0 for CT<->MR")
    lambda_shape: float = Field(1.0, ge=0, description="shape-consistency weight on the generators")
    lambda_seg_fake: float = Field(1.0, ge=0, description="weight of segmenter training on translated volumes")
    lambda_class_intensity: float = Field(0.0, ge=0, description=(
        "weight of the class-conditional intensity term (medgan.losses.ClassMeanLoss): each labelled organ's mean in "
        "G_A2B(x_A) against its mean over the real labelled B volumes, both directions; needs labels in both domains"))
    shape_warmup_iters: int = Field(0, ge=0, description="iterations of segmenter training before the shape and translated-segmentation terms start")


class OptimConfig(_Strict):
    """Adam for the generators and discriminators (``lr``, ``betas``: Zhu et al. 2017's 2e-4,
    (0.5, 0.999)) and for the segmenters (``seg_lr``, ``seg_betas``; default the same). A U-Net
    segmenter learns far faster at a segmentation rate: 1e-3 with (0.9, 0.999), what ADDA's
    source segmenter uses here (``configs/phantom.yaml``, the benchmark)."""

    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    seg_lr: float | None = Field(None, gt=0, description="segmenters' Adam learning rate; default lr")
    seg_betas: tuple[float, float] | None = Field(None, description="segmenters' Adam betas; default betas")
    n_iters: int = Field(1000, ge=1)
    seg_pretrain_iters: int = Field(0, ge=0, description="iterations before the n_iters joint ones that train only the "
                                    "segmenters, on the real labelled volumes (no G or D step; cheap)")
    seg_finetune_iters: int = Field(0, ge=0, description="iterations after the n_iters joint ones that train only the "
                                    "segmenters, on real labelled volumes and on volumes translated by the frozen generators "
                                    "(no G or D step), at seg_lr decaying linearly to 0 over their second half")
    decay_start: int | None = Field(None, ge=0, description="iteration where the linear decay to 0 begins; default n_iters // 2")


class TrainConfig(TrainBase):
    output_dir: Path = Path("runs/cyclegan")
    log_every: int = Field(10, ge=1)
    pool_size: int = Field(50, ge=0)
    num_workers: int = Field(0, ge=0)
    png_every: int = Field(250, ge=1)


class CycleGANConfig(PipelineConfig):
    """Shape-consistent CycleGAN (Zhu et al. 2017; Zhang, Yang & Zheng, CVPR 2018)."""
    pipeline: Literal["cyclegan"] = "cyclegan"

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
        if self.loss.lambda_class_intensity > 0 and not self.classes:
            raise ValueError("loss.lambda_class_intensity matches organ intensities: set classes (and labels) or set it to 0")
        for stage in ("seg_pretrain_iters", "seg_finetune_iters"):
            if getattr(self.optim, stage) and not self.classes:
                raise ValueError(f"optim.{stage} trains the segmenters: set classes (and labels) or set it to 0")
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
