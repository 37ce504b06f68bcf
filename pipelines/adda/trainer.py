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

from medgan.keys import Keys
from medgan.losses import AdversarialLoss, MaskedDiceCELoss
from medgan.networks.checks import check_input_size
from medgan.networks.discriminators import FeatureDiscriminator
from medgan.networks.segmenters import build_split_segmenter
from medgan.training.engine import Trainer
from medgan.utils import set_requires_grad
from medgan.pipelines.adda.config import AddaConfig
from medgan.pipelines.data_config import domain_preprocessor

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


class AddaTrainer(Trainer):
    """The three ADDA stages on the training engine (:class:`~medgan.training.Trainer`)."""

    pipeline = PIPELINE
    find_unused_parameters = True  # E_tgt's levels above the aligned ones get no gradient

    def __init__(self, config: AddaConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        super().__init__(config, resume, progress)
        self.summary_keys = ()

    # ------------------------------------------------------------------ what the engine asks for
    def build_networks(self) -> nn.ModuleDict:
        nets = build_adda_networks(self.cfg)
        check_input_size({"segmenter (E_src + H)": torch.nn.Sequential(nets["E_src"], nets["H"])}, self.cfg.train.patch_size)
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o, nets = self.cfg.optim, self.nets
        d_params = [p for n, m in nets.items() if n.startswith("D_") for p in m.parameters()]
        opts = {"source": torch.optim.Adam([*nets["E_src"].parameters(), *nets["H"].parameters()], lr=o.lr_source, betas=o.betas),
                "target": torch.optim.Adam(nets["E_tgt"].parameters(), lr=o.lr_target, betas=o.betas),
                "disc": torch.optim.Adam(d_params, lr=o.lr_disc, betas=o.betas)}
        if o.n_oracle_iters:
            opts["oracle"] = torch.optim.Adam([*nets["E_oracle"].parameters(), *nets["H_oracle"].parameters()], lr=o.lr_source, betas=o.betas)
        return opts

    def build_data(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.adv = AdversarialLoss(cfg.loss.gan_mode)
        self.seg = MaskedDiceCELoss()
        self.domain_datasets([cfg.source, cfg.target], lambda dom: domain_preprocessor(dom, t.spacing_mm, cfg.classes))
        if not any(v[Keys.HAS_LABEL.value] for v in self.datasets[cfg.source.name].volumes):
            raise ValueError(f"source domain {cfg.source.name}: no labelled volume; ADDA's source stage needs labels")

    def total_iterations(self) -> int:
        return self.cfg.stages[-1][1]

    def meta_extra(self) -> dict:
        return {"domains": [self.cfg.source.name, self.cfg.target.name], "classes": list(self.cfg.classes)}

    def checkpoint_now(self, it: int) -> bool:
        return it in {e for _, e in self.cfg.stages}

    def stage(self, it: int) -> str:
        for name, end in self.cfg.stages:
            if it <= end:
                return name
        return "done"

    # ------------------------------------------------------------------ one iteration
    def step(self, it: int) -> dict[str, float]:
        stage, src, tgt = self.stage(it), self.cfg.source.name, self.cfg.target.name
        if stage == "adapt" and it == self.cfg.stages[0][1] + 1:
            self.nets["E_tgt"].load_state_dict(self.nets["E_src"].state_dict())  # E_t starts as E_s (on every rank)
        if stage == "source":
            return self.supervised_step("E_src", "H", "source", self.batch(src, it, segmenter_only=True), src)
        if stage == "adapt":
            return self.adapt_step(self.batch(src, it)["x"], self.batch(tgt, it)["x"])
        return self.supervised_step("E_oracle", "H_oracle", "oracle", self.batch(tgt, it, segmenter_only=True), tgt)

    def supervised_step(self, enc: str, head: str, group: str, batch: dict, domain: str) -> dict[str, float]:
        """Stage 1 (source) or 3 (oracle): Dice + cross-entropy on labelled patches of ``domain``
        (through its augmentation, ``augment``: label synthesis, intensity)."""
        with self.autocast():
            pred = self.net(head)(self.net(enc)(self.seg_input(domain, batch["x"], y=batch["y"], m=batch["m"])))
            loss = self.joined(self.seg(pred, batch["y"], batch["m"]), pred)
        if loss is None:
            return {}
        self.update(group, loss, {f"seg_{group}": loss})
        return {f"seg_{group}": float(loss.detach())} if bool(batch["m"].any()) else {}

    def adapt_step(self, x_s: torch.Tensor, x_t: torch.Tensor) -> dict[str, float]:
        """Stage 2 (Tzeng Eqs. 6-7) on source and target patches ``(B, 1, D, H, W)``: the
        feature discriminators, then E_tgt with inverted labels; E_src and H frozen."""
        levels = self.cfg.loss.align_levels
        set_requires_grad([self.nets["E_src"], self.nets["H"]], False)
        names = [f"D_level{lv}" for lv in levels]
        with self.autocast():
            with torch.no_grad():
                f_s = self.nets["E_src"](x_s)
            f_t = self.net("E_tgt")(x_t)
            set_requires_grad([self.nets[d] for d in names], True)
            d_loss = sum(self.adv(self.net(d)(f_s[lv]), True) + self.adv(self.net(d)(f_t[lv].detach()), False)
                         for d, lv in zip(names, levels))
        self.update("disc", d_loss)
        set_requires_grad([self.nets[d] for d in names], False)
        with self.autocast():
            t_loss = sum(self.adv(self.net(d, update=False)(f_t[lv]), True, for_discriminator=False) for d, lv in zip(names, levels))
        self.update("target", t_loss)
        set_requires_grad([self.nets[d] for d in names], True)
        return {"D_feat": float(d_loss.detach()), "E_tgt_adv": float(t_loss.detach())}


def train_adda(config: AddaConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Run the ADDA stages; returns the final checkpoint folder."""
    return AddaTrainer(config, resume, progress).fit()


__all__ = ["AddaTrainer", "build_adda_networks", "train_adda"]
