"""Training of the 3D conditional VAE on label-map-conditioned patches (resumable)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

import medgan
from medgan.checkpoint import load_networks, load_training_state, read_meta, resolve_checkpoint, save_checkpoint
from medgan.config import dump_config
from medgan.data.intensity import mean_scaling
from medgan.data.transforms import PatchDataset
from medgan.keys import Keys
from medgan.networks.vae import SpatialCVAE, vae_loss
from medgan.utils import LossLog, resolve_device, rng_state, seed_everything, set_rng_state
from pipelines.cvae.config import CVAEConfig
from pipelines.data_config import domain_preprocessor

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


class CVAETrainer:
    """Trains :class:`~medgan.networks.vae.SpatialCVAE` with a beta-annealed negative ELBO."""

    def __init__(self, config: CVAEConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        self.cfg, t = config, config.train
        self.device, self.out, self.progress = resolve_device(t.device), Path(t.output_dir), progress
        seed_everything(t.seed)
        self.model = build_cvae(config).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=config.optim.lr)
        vols, scalings = labelled_volumes(config)
        self.dataset = PatchDataset(vols, t.patch_size, seed=t.seed, length=config.optim.n_iters * t.batch_size,
                                    pos=t.crop_pos, neg=t.crop_neg)
        self.normalization = {config.domain.name: {"kind": config.domain.intensity.kind, **mean_scaling(scalings).to_dict()}}
        self.iteration = 0
        if resume is not None:
            self.load(resume)

    def meta(self) -> dict:
        return {"pipeline": PIPELINE, "medgan_version": medgan.__version__, "iteration": self.iteration,
                "classes": list(self.cfg.classes), "normalization": self.normalization}

    def save(self) -> Path:
        state = {"iteration": self.iteration, "optimizers": {"cvae": self.opt.state_dict()},
                 "rng": rng_state()}
        return save_checkpoint(self.out / "checkpoints" / f"iter_{self.iteration:06d}", {"CVAE": self.model}, self.meta(),
                               dump_config(self.cfg), state)

    def load(self, checkpoint: str | Path) -> None:
        folder = resolve_checkpoint(checkpoint, need_state=True)
        read_meta(folder, PIPELINE)
        load_networks(folder, {"CVAE": self.model})
        state = load_training_state(folder)
        self.opt.load_state_dict(state["optimizers"]["cvae"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])

    def beta(self, it: int) -> float:
        lc = self.cfg.loss
        return lc.beta * (min(1.0, it / lc.kl_anneal_iters) if lc.kl_anneal_iters else 1.0)

    def step(self, it: int) -> dict[str, float]:
        b = self.cfg.train.batch_size
        items = [self.dataset[(it - 1) * b + j] for j in range(b)]
        x = torch.stack([i[Keys.IMAGE.value] for i in items]).to(self.device)
        c = torch.stack([i[Keys.LABEL.value] for i in items]).to(self.device)
        lc = self.cfg.loss
        losses = vae_loss(self.model(x, c), x, beta=self.beta(it), recon=lc.recon, sigma=lc.sigma)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "beta": self.beta(it)}

    def fit(self) -> Path:
        t, end = self.cfg.train, self.cfg.optim.n_iters
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.cfg))
        log = LossLog(self.out / "losses.csv", self.iteration)
        self.model.train()
        ckpt = None
        while self.iteration < end:
            self.iteration += 1
            logs = self.step(self.iteration)
            log.write(self.iteration, logs)
            if self.iteration % t.log_every == 0:
                logger.info("cvae %d recon %.1f kl %.1f beta %.2f", self.iteration, logs["recon"], logs["kl"], logs["beta"])
            if self.iteration % t.checkpoint_every == 0 or self.iteration == end:
                ckpt = self.save()
        return ckpt if ckpt is not None else self.save()


def train_cvae(config: CVAEConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    return CVAETrainer(config, resume, progress).fit()
