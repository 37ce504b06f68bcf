"""Training of the 3D conditional VAE on label-map-conditioned patches (resumable)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medgan.data.intensity import mean_scaling
from medgan.data.transforms import PatchDataset
from medgan.networks.vae import SpatialCVAE, vae_loss
from medgan.training.engine import RANK_SEED_STRIDE, Trainer
from medgan.pipelines.cvae.config import CVAEConfig
from medgan.pipelines.data_config import domain_preprocessor

logger = logging.getLogger(__name__)
PIPELINE = "cvae"


def build_cvae(config: CVAEConfig) -> SpatialCVAE:
    n = config.network
    return SpatialCVAE(3, 1, len(config.classes) + 1, n.latent_channels, n.channels, n.prior)


def labelled_volumes(config: CVAEConfig) -> tuple[list[dict], list]:
    """The domain's labelled volumes in the training frame (held-out slab removed) and their scalings."""
    t = config.train
    pre = domain_preprocessor(config.domain, t.spacing_mm, config.classes)
    vols, scalings = [], []
    for e in config.domain.data.datalist():
        if not e.get("label"):
            logger.warning("%s: no label map, not used by the CVAE", e["image"])
            continue
        v, s = pre.training_volume(e, t.patch_size, exclude_inferior=t.holdout_fraction)
        vols.append(v)
        scalings.append(s)
    if not vols:
        raise ValueError(f"domain {config.domain.name}: no labelled volume to train the CVAE on")
    return vols, scalings


class CVAETrainer(Trainer):
    """Trains :class:`~medgan.networks.vae.SpatialCVAE` (Sohn et al. 2015, Eq. 4: the negative
    conditional ELBO, KL weight ``beta`` annealed linearly over ``loss.kl_anneal_iters``) on the
    training engine (:class:`~medgan.training.Trainer`)."""

    pipeline = PIPELINE
    summary_keys = ("recon", "kl", "beta")

    def build_networks(self) -> torch.nn.ModuleDict:
        return torch.nn.ModuleDict({"CVAE": build_cvae(self.cfg)})

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"cvae": torch.optim.Adam(self.nets["CVAE"].parameters(), lr=self.cfg.optim.lr)}

    def build_data(self) -> None:
        t = self.cfg.train
        vols, scalings = labelled_volumes(self.cfg)
        # seed offset 0 on rank 0 keeps the patches of medgan <= 0.2 (seed = train.seed)
        self.datasets = {"labelled": PatchDataset(vols, t.patch_size, seed=t.seed + self.rank * RANK_SEED_STRIDE,
                                                  length=self.total_iterations() * t.batch_size, pos=t.crop_pos, neg=t.crop_neg)}
        self.normalization = {self.cfg.domain.name: {"kind": self.cfg.domain.intensity.kind, **mean_scaling(scalings).to_dict()}}

    def total_iterations(self) -> int:
        return self.cfg.optim.n_iters

    def meta_extra(self) -> dict:
        return {"classes": list(self.cfg.classes)}

    @property
    def model(self) -> SpatialCVAE:
        return self.nets["CVAE"]

    def beta(self, it: int) -> float:
        lc = self.cfg.loss
        return lc.beta * (min(1.0, it / lc.kl_anneal_iters) if lc.kl_anneal_iters else 1.0)

    def step(self, it: int) -> dict[str, float]:
        """One ELBO step on image patches ``x (B, 1, D, H, W)`` conditioned on their label maps."""
        batch, lc = self.batch("labelled", it), self.cfg.loss
        with self.autocast():
            out = self.net("CVAE")(batch["x"], batch["y"])
        losses = vae_loss(out, batch["x"], beta=self.beta(it), recon=lc.recon, sigma=lc.sigma)
        self.update("cvae", losses["total"], {k: v for k, v in losses.items() if k != "total"})
        return {**{k: float(v.detach()) for k, v in losses.items()}, "beta": self.beta(it)}


def train_cvae(config: CVAEConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    return CVAETrainer(config, resume, progress).fit()
