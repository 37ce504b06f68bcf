"""ADDA training in three stages, one iteration counter, resumable at any iteration.

1. **source** (Tzeng et al. 2017, Eq. 1): encoder E_s and head H (a U-Net split at its skip
   connections) learn Dice + cross-entropy on labelled source patches.
2. **adapt** (Eqs. 6-7, "inverted label" GAN loss): E_t starts as a copy of E_s; for each aligned
   level l a feature discriminator D_l learns ``L_adv(D_l(E_s(x_s)_l), real) + L_adv(D_l(E_t(x_t)_l), fake)``
   and E_t learns ``L_adv(D_l(E_t(x_t)_l), real)`` (the non-saturating loss), on unlabelled target
   patches; E_s and H are frozen. Target segmentation is ``H(E_t(x_t))``.
3. **oracle** (optional): a segmenter E_o + H_o trained on the target's labels, the supervised
   upper bound of the standard domain-adaptation table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

import medgan
from medgan.checkpoint import load_networks, load_training_state, read_meta, resolve_checkpoint, save_checkpoint
from medgan.config import dump_config
from medgan.data.intensity import mean_scaling
from medgan.data.transforms import PatchDataset
from medgan.keys import Keys
from medgan.losses import AdversarialLoss, MaskedDiceCELoss
from medgan.networks.checks import check_input_size
from medgan.networks.discriminators import FeatureDiscriminator
from medgan.networks.segmenters import build_split_segmenter
from medgan.utils import LossLog, resolve_device, rng_state, seed_everything, set_requires_grad, set_rng_state
from pipelines.adda.config import AddaConfig
from pipelines.data_config import domain_preprocessor

logger = logging.getLogger(__name__)
PIPELINE = "adda"


def build_adda_networks(config: AddaConfig) -> nn.ModuleDict:
    """E_src, H, E_tgt, D_level{l} per aligned level and, with an oracle stage, E_oracle, H_oracle."""
    k, f = len(config.classes) + 1, config.network.seg_features
    e_s, head = build_split_segmenter(3, 1, k, f)
    e_t, _ = build_split_segmenter(3, 1, k, f)
    nets: dict[str, nn.Module] = {"E_src": e_s, "H": head, "E_tgt": e_t}
    level_ch = [f[0], f[1], f[2], f[3], f[4]]
    for lv in config.loss.align_levels:
        nets[f"D_level{lv}"] = FeatureDiscriminator(3, level_ch[lv], config.network.disc_channels)
    if config.optim.n_oracle_iters:
        e_o, h_o = build_split_segmenter(3, 1, k, f)
        nets["E_oracle"], nets["H_oracle"] = e_o, h_o
    return nn.ModuleDict(nets)


class AddaTrainer:
    """Builds data and networks from an :class:`AddaConfig` and runs the three stages."""

    def __init__(self, config: AddaConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        self.cfg, t, o = config, config.train, config.optim
        self.device = resolve_device(t.device)
        self.progress, self.out = progress, Path(t.output_dir)
        seed_everything(t.seed)
        self.nets = build_adda_networks(config).to(self.device)
        check_input_size({"segmenter (E_src + H)": torch.nn.Sequential(self.nets["E_src"], self.nets["H"])}, t.patch_size)
        betas = o.betas
        d_params = [p for n, m in self.nets.items() if n.startswith("D_") for p in m.parameters()]
        self.optimizers = {
            "source": torch.optim.Adam([*self.nets["E_src"].parameters(), *self.nets["H"].parameters()], lr=o.lr_source, betas=betas),
            "target": torch.optim.Adam(self.nets["E_tgt"].parameters(), lr=o.lr_target, betas=betas),
            "disc": torch.optim.Adam(d_params, lr=o.lr_disc, betas=betas),
        }
        if o.n_oracle_iters:
            self.optimizers["oracle"] = torch.optim.Adam(
                [*self.nets["E_oracle"].parameters(), *self.nets["H_oracle"].parameters()], lr=o.lr_source, betas=betas)
        self.adv = AdversarialLoss(config.loss.gan_mode)
        self.seg = MaskedDiceCELoss()
        self.iteration = 0
        total = config.stages[-1][1]
        self.datasets, scalings = {}, {}
        for i, dom in enumerate((config.source, config.target)):
            pre = domain_preprocessor(dom, t.spacing_mm, config.classes)
            vols, sc = [], []
            for e in dom.data.datalist():
                v, s = pre.training_volume(e, t.patch_size)
                vols.append(v)
                sc.append(s)
            scalings[dom.name] = mean_scaling(sc)
            self.datasets[dom.name] = PatchDataset(vols, t.patch_size, seed=t.seed * 1000 + i, length=total * t.batch_size,
                                                   pos=t.crop_pos, neg=t.crop_neg)
            logger.info("%s: %d volumes (%d labelled)", dom.name, len(vols), sum(v[Keys.HAS_LABEL.value] for v in vols))
        if not any(v[Keys.HAS_LABEL.value] for v in self.datasets[config.source.name].volumes):
            raise ValueError(f"source domain {config.source.name}: no labelled volume; ADDA's source stage needs labels")
        self.normalization = {d.name: {"kind": d.intensity.kind, **scalings[d.name].to_dict()} for d in (config.source, config.target)}
        if resume is not None:
            self.load(resume)

    def stage(self, it: int) -> str:
        for name, end in self.cfg.stages:
            if it <= end:
                return name
        return "done"

    # ------------------------------------------------------------------ state
    def meta(self) -> dict:
        return {"pipeline": PIPELINE, "medgan_version": medgan.__version__, "iteration": self.iteration,
                "domains": [self.cfg.source.name, self.cfg.target.name], "classes": list(self.cfg.classes),
                "normalization": self.normalization}

    def save(self) -> Path:
        state = {"iteration": self.iteration, "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                 "rng": rng_state()}
        folder = self.out / "checkpoints" / f"iter_{self.iteration:06d}"
        return save_checkpoint(folder, dict(self.nets.items()), self.meta(), dump_config(self.cfg), state)

    def load(self, checkpoint: str | Path) -> None:
        folder = resolve_checkpoint(checkpoint, need_state=True)
        read_meta(folder, PIPELINE)
        load_networks(folder, dict(self.nets.items()))
        state = load_training_state(folder)
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        logger.info("resumed from %s at iteration %d (%s stage)", folder, self.iteration, self.stage(self.iteration + 1))

    # ------------------------------------------------------------------ steps
    def _batch(self, domain: str, it: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ds, b = self.datasets[domain], self.cfg.train.batch_size
        items = [ds[(it - 1) * b + j] for j in range(b)]
        return (torch.stack([i[Keys.IMAGE.value] for i in items]).to(self.device),
                torch.stack([i[Keys.LABEL.value] for i in items]).to(self.device),
                torch.tensor([i[Keys.HAS_LABEL.value] for i in items], device=self.device))

    def _supervised(self, enc: str, head: str, opt: str, batch) -> dict[str, float]:  # noqa: ANN001
        x, y, m = batch
        loss = self.seg(self.nets[head](self.nets[enc](x)), y, m)
        if loss is None:
            return {}
        self.optimizers[opt].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[opt].step()
        return {f"seg_{opt}": float(loss.detach())}

    def adapt_step(self, x_s: torch.Tensor, x_t: torch.Tensor) -> dict[str, float]:
        """One adaptation step on source and target patches ``(B, 1, D, H, W)``."""
        levels = self.cfg.loss.align_levels
        set_requires_grad([self.nets["E_src"], self.nets["H"]], False)
        with torch.no_grad():
            f_s = self.nets["E_src"](x_s)
        f_t = self.nets["E_tgt"](x_t)
        discs = [self.nets[f"D_level{lv}"] for lv in levels]
        set_requires_grad(discs, True)
        d_loss = sum(self.adv(d(f_s[lv]), True) + self.adv(d(f_t[lv].detach()), False) for d, lv in zip(discs, levels))
        self.optimizers["disc"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["disc"].step()
        set_requires_grad(discs, False)
        t_loss = sum(self.adv(d(f_t[lv]), True, for_discriminator=False) for d, lv in zip(discs, levels))  # inverted labels
        self.optimizers["target"].zero_grad(set_to_none=True)
        t_loss.backward()
        self.optimizers["target"].step()
        set_requires_grad(discs, True)
        return {"D_feat": float(d_loss.detach()), "E_tgt_adv": float(t_loss.detach())}

    def fit(self) -> Path:
        """Run every remaining iteration of every stage; returns the last checkpoint."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        t, end = self.cfg.train, self.cfg.stages[-1][1]
        src, tgt = self.cfg.source.name, self.cfg.target.name
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.cfg))
        log = LossLog(self.out / "losses.csv", self.iteration)
        self.nets.train()
        ckpt = None
        with Progress(TextColumn("adda {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not self.progress) as bar:
            task = bar.add_task("adda", total=end, completed=self.iteration, stage="")
            while self.iteration < end:
                self.iteration += 1
                it, stage = self.iteration, self.stage(self.iteration)
                if stage == "adapt" and it == self.cfg.stages[0][1] + 1:
                    self.nets["E_tgt"].load_state_dict(self.nets["E_src"].state_dict())  # E_t starts as E_s
                if stage == "source":
                    logs = self._supervised("E_src", "H", "source", self._batch(src, it))
                elif stage == "adapt":
                    logs = self.adapt_step(self._batch(src, it)[0], self._batch(tgt, it)[0])
                else:
                    logs = self._supervised("E_oracle", "H_oracle", "oracle", self._batch(tgt, it))
                log.write(it, logs)
                if it % t.log_every == 0:
                    logger.info("iter %d (%s) %s", it, stage, " ".join(f"{k}={v:.3f}" for k, v in logs.items()))
                if it % t.checkpoint_every == 0 or it == end or it in {e for _, e in self.cfg.stages}:
                    ckpt = self.save()
                bar.update(task, completed=it, stage=stage)
        return ckpt if ckpt is not None else self.save()


def train_adda(config: AddaConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Run the ADDA stages; returns the final checkpoint folder."""
    return AddaTrainer(config, resume, progress).fit()


__all__ = ["AddaTrainer", "build_adda_networks", "train_adda"]
