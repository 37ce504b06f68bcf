"""Config schema of the ADDA pipeline (all defaults here; YAML files override fields).

Which U-Net features are aligned: the encoder of MONAI's BasicUNet gives five levels (0: full
resolution ... 4: 1/16, the bottleneck), and the decoder consumes all of them through skip
connections. ``loss.align_levels`` lists the levels that get a domain discriminator. The default
[2, 3, 4] aligns the three deepest levels: they carry the semantic features the decoder relies
on, while levels 0-1 are low-level filters (edges, intensities) that the shared encoder weights
move along with; aligning them too costs most of the memory (full and half resolution) for little
gain. Add 0 and 1 to align every skip connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medgan.losses.adversarial import GANMode
from medgan.pipelines.data_config import DomainConfig, InferenceConfig, PipelineConfig, TrainBase, _Strict


class AddaNetworkConfig(_Strict):
    seg_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    disc_channels: int = Field(64, ge=1, description="channels of each feature discriminator")


class AddaLossConfig(_Strict):
    gan_mode: GANMode = Field("nonsaturating", description="the paper's inverted-label GAN loss is the non-saturating one")
    align_levels: list[int] = Field(default_factory=lambda: [2, 3, 4], description="U-Net encoder levels 0-4 to align")

    @model_validator(mode="after")
    def _levels(self) -> AddaLossConfig:
        if not self.align_levels or any(lv not in range(5) for lv in self.align_levels):
            raise ValueError(f"loss.align_levels must be a non-empty subset of 0..4, got {self.align_levels}")
        return self


class AddaOptimConfig(_Strict):
    lr_source: float = Field(1e-3, gt=0, description="source segmenter (Adam)")
    lr_target: float = Field(2e-4, gt=0, description="target encoder during adaptation")
    lr_disc: float = Field(2e-4, gt=0, description="feature discriminators")
    betas: tuple[float, float] = (0.5, 0.999)
    n_source_iters: int = Field(500, ge=1)
    n_adapt_iters: int = Field(500, ge=0)
    n_oracle_iters: int = Field(500, ge=0, description="supervised upper bound on target labels; 0 skips it")


class AddaTrainConfig(TrainBase):
    output_dir: Path = Path("runs/adda")
    checkpoint_every: int = Field(250, ge=1)


class AddaConfig(PipelineConfig):
    """ADDA (Tzeng et al. 2017) for 3D segmentation: ``source`` labelled, ``target`` labels used
    only by the supervised upper bound and by evaluation."""
    pipeline: Literal["adda"] = "adda"

    classes: list[str] = Field(min_length=1)
    source: DomainConfig
    target: DomainConfig
    network: AddaNetworkConfig = AddaNetworkConfig()
    loss: AddaLossConfig = AddaLossConfig()
    optim: AddaOptimConfig = AddaOptimConfig()
    train: AddaTrainConfig = AddaTrainConfig()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _check(self) -> AddaConfig:
        for d in (self.source, self.target):
            if d.labels is None:
                raise ValueError(f"domain {d.name} needs a labels section (the target's are used only for evaluation)")
        if self.source.name == self.target.name:
            raise ValueError("source.name and target.name must differ")
        return self

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.inference.roi_size or self.train.patch_size

    @property
    def stages(self) -> list[tuple[str, int]]:
        """``[(stage, last_iteration)]`` in order: source, adapt, oracle."""
        o, out, end = self.optim, [], 0
        for name, n in (("source", o.n_source_iters), ("adapt", o.n_adapt_iters), ("oracle", o.n_oracle_iters)):
            if n:
                end += n
                out.append((name, end))
        return out
