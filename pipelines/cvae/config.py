"""Config schema of the CVAE augmentation pipeline (all defaults here)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medgan.pipelines.data_config import DomainConfig, InferenceConfig, PipelineConfig, TrainBase, _Strict


class CVAENetworkConfig(_Strict):
    latent_channels: int = Field(8, ge=1, description="channels of the latent map (1/8 resolution)")
    channels: tuple[int, int, int] = (16, 32, 64)
    prior: Literal["fixed", "learned"] = "learned"


class CVAELossConfig(_Strict):
    """Negative ELBO: ``recon + beta_t * KL``, beta_t rising linearly from 0 to ``beta`` over
    ``kl_anneal_iters`` (Bowman et al. 2016). The reconstruction term is the negative
    log-likelihood of intensities in [-1, 1] under a Gaussian decoder of fixed scale ``sigma``
    (``gaussian``: sum (x - x')^2 / 2 sigma^2) or a Laplace one (``laplace``: sum |x - x'| / sigma);
    sigma = 0.1 is 5 % of the [-1, 1] range."""

    beta: float = Field(1.0, ge=0)
    kl_anneal_iters: int = Field(200, ge=0)
    recon: Literal["gaussian", "laplace"] = "gaussian"
    sigma: float = Field(0.1, gt=0)


class CVAEOptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    n_iters: int = Field(600, ge=1)


class CVAETrainConfig(TrainBase):
    batch_size: int = Field(2, ge=1)
    patch_size: tuple[int, int, int] = Field((64, 64, 16), description="voxels, each divisible by 8")
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="inferior fraction of axial slices kept out of every training step")
    output_dir: Path = Path("runs/cvae")
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(300, ge=1)


class SampleConfig(_Strict):
    """Label maps are deformed before sampling: a random affine (rotation in degrees, scale as a
    fraction) and a random elastic field (MONAI Rand3DElastic: sigma and magnitude in voxels)."""

    n_per_label: int = Field(4, ge=1)
    deform: bool = True
    rotate_deg: float = Field(8.0, ge=0)
    scale: float = Field(0.08, ge=0)
    elastic_sigma: tuple[float, float] = (5.0, 7.0)
    elastic_magnitude: tuple[float, float] = (20.0, 60.0)
    temperature: float = Field(1.0, ge=0, description="noise scale; 0 = the prior's mean")
    truncation: float | None = Field(None, ge=0, description="BigGAN truncation: redraw noise values beyond +-truncation "
                                     "(0 = the prior's mean; none = untruncated)")


class AugmentConfig(_Strict):
    seg_iters: int = Field(400, ge=1, description="iterations of each segmenter (real-only and real+synthetic)")
    seg_lr: float = Field(1e-3, gt=0)
    seg_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    synthetic_fraction: float = Field(0.5, ge=0, le=1, description="share of real+synthetic training patches drawn from synthetic pairs")


class CVAEConfig(PipelineConfig):
    pipeline: Literal["cvae"] = "cvae"
    classes: list[str] = Field(min_length=1)
    domain: DomainConfig
    network: CVAENetworkConfig = CVAENetworkConfig()
    loss: CVAELossConfig = CVAELossConfig()
    optim: CVAEOptimConfig = CVAEOptimConfig()
    train: CVAETrainConfig = CVAETrainConfig()
    sample: SampleConfig = SampleConfig()
    augment: AugmentConfig = AugmentConfig()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _labels(self) -> CVAEConfig:
        if self.domain.labels is None:
            raise ValueError(f"domain {self.domain.name} needs a labels section: the CVAE is conditioned on label maps")
        f = 2 ** len(self.network.channels)
        if any(p % f for p in self.train.patch_size):
            raise ValueError(f"train.patch_size {self.train.patch_size} must be divisible by {f} (2**len(network.channels))")
        return self
