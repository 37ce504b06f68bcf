"""Config schema of the paired translation pipeline (registered MR/CT pairs, SynthRAD-style).

One pipeline, two models chosen by ``model``:

- ``pix2pix`` (Isola et al., CVPR 2017): U-Net generator G, conditional 3D PatchGAN D on
  (input, output), ``L_G = L_cGAN + lambda_l1 |y - G(x)|_1`` (Eq. 4, lambda = 100) with the L1
  inside the mask;
- ``regression``: the same G trained by the masked L1 alone (the supervised nnU-Net-style
  regression of the SynthRAD2025 MR->CT winners).

Either can add ``lambda_perception`` times a segmentation-feature perception loss (a frozen CT
segmenter's encoder from a medgan CycleGAN checkpoint, ``perception_checkpoint``).
Input paths in a YAML file are relative to its folder, output_dir to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medgan.config import InputPath, InputPaths
from medgan.data.datalist import datalist_from_msd, datalist_from_synthrad
from medgan.losses.adversarial import GANMode
from medgan.pipelines.data_config import InferenceConfig, IntensityConfig, PipelineConfig, TrainBase, _Strict


class PairedData(_Strict):
    """Exactly one of ``synthrad`` (``<root>/<case>/{image_name, target_name, mask_name}`` with
    .mha / .nii.gz), ``msd`` (dataset.json entries with ``image``, ``target``, optional ``mask``)
    or ``files`` (``[{image, target, mask}]``). Each pair must share one grid."""

    synthrad: InputPath | None = None
    image_name: str = "mr"
    target_name: str = "ct"
    mask_name: str | None = "mask"
    msd: InputPath | None = None
    section: str = "training"
    files: InputPaths | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PairedData:
        if sum(x is not None for x in (self.synthrad, self.msd, self.files)) != 1:
            raise ValueError("give exactly one of data.synthrad, data.msd or data.files")
        return self

    def datalist(self) -> list[dict[str, str | None]]:
        if self.synthrad is not None:
            return datalist_from_synthrad(self.synthrad, self.image_name, self.target_name, self.mask_name)
        entries = datalist_from_msd(self.msd, self.section) if self.msd is not None else [
            {"image": f.get("image"), "target": f.get("target"), "mask": f.get("mask")} for f in self.files or []]
        for e in entries:
            if not e.get("target"):
                raise ValueError(f"{e.get('image')}: paired entry without a 'target' (the registered CT)")
        return entries


class PairedDomain(_Strict):
    """One side of the pair: its name (``MR``, ``CT``) and intensity scaling."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")
    intensity: IntensityConfig = IntensityConfig()


class PairedNetwork(_Strict):
    unet_features: tuple[int, int, int, int, int, int] = (16, 16, 32, 64, 128, 16)
    ndf: int = Field(32, ge=1, description="first-layer channels of the conditional PatchGAN (pix2pix)")
    d_layers: int = Field(3, ge=1)


class PairedLoss(_Strict):
    gan_mode: GANMode = Field("nonsaturating", description="pix2pix: the GAN objective of Isola et al. (BCE, non-saturating G)")
    lambda_l1: float = Field(100.0, ge=0, description="weight of the masked L1 against the cGAN term (Isola Eq. 4: 100)")
    lambda_perception: float = Field(0.0, ge=0, description="weight of the segmentation-feature perception loss; 0: off")
    perception_checkpoint: InputPath | None = Field(None, description="a medgan CycleGAN checkpoint whose S_<target> gives the features")
    perception_levels: tuple[int, ...] = (0, 1, 2, 3)


class PairedOptim(_Strict):
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    n_iters: int = Field(1000, ge=1)
    decay_start: int | None = Field(None, ge=0, description="start of the linear decay to 0; default n_iters // 2")


class PairedTrain(TrainBase):
    output_dir: Path = Path("runs/paired")
    crop_neg: float = Field(0.0, ge=0, description="patches are centred inside the mask (pos) by default")
    png_every: int = Field(250, ge=1)
    holdout_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of axial slices at the inferior end of every "
                                    "pair left out of training (a held-out slab to test on)")


class PairedConfig(PipelineConfig):
    """Paired MR -> CT translation: pix2pix 3D or masked-L1 regression."""

    pipeline: Literal["paired"] = "paired"
    model: Literal["pix2pix", "regression"] = "pix2pix"
    source: PairedDomain = PairedDomain(name="MR", intensity=IntensityConfig(kind="percentile"))
    target: PairedDomain = PairedDomain(name="CT")
    data: PairedData
    network: PairedNetwork = PairedNetwork()
    loss: PairedLoss = PairedLoss()
    optim: PairedOptim = PairedOptim()
    train: PairedTrain = PairedTrain()
    inference: InferenceConfig = InferenceConfig()

    @model_validator(mode="after")
    def _check(self) -> PairedConfig:
        if self.source.name == self.target.name:
            raise ValueError("source.name and target.name must differ")
        if self.loss.lambda_perception > 0 and self.loss.perception_checkpoint is None:
            raise ValueError("loss.lambda_perception > 0 needs loss.perception_checkpoint (a CycleGAN checkpoint with S_<target>)")
        return self

    @property
    def classes(self) -> list[str]:
        return []  # no segmenters of its own

    def domain(self, name: str) -> PairedDomain:
        for d in (self.source, self.target):
            if d.name.lower() == name.lower():
                return d
        raise ValueError(f"no domain {name!r}; this model translates {self.source.name} -> {self.target.name}")

    @property
    def roi_size(self) -> tuple[int, int, int]:
        return self.inference.roi_size or self.train.patch_size
