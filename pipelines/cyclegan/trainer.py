"""Training of the shape-consistent CycleGAN.

One iteration (A = domain_a, e.g. CT; B = domain_b, e.g. MR), after Zhu et al., ICCV 2017 and
Zhang, Yang & Zheng, CVPR 2018 (arXiv 1802.09655):

1. Generators (D and S frozen):
   ``L_G = L_adv(D_B(G_A2B(x_A)), real) + L_adv(D_A(G_B2A(x_B)), real)``            (Zhu Eq. 1)
   ``    + lambda_cycle (|G_B2A(G_A2B(x_A)) - x_A|_1 + |G_A2B(G_B2A(x_B)) - x_B|_1)``  (Zhu Eq. 2)
   ``    + lambda_identity (|G_A2B(x_B) - x_B|_1 + |G_B2A(x_A) - x_A|_1)``             (Zhu sec. 5.2)
   ``    + lambda_shape (L_seg(S_B(G_A2B(x_A)), y_A) + L_seg(S_A(G_B2A(x_B)), y_B))``   (Zhang Eq. 4)
   ``    + lambda_class_intensity (L_cls(G_A2B(x_A), y_A, mu_B) + L_cls(G_B2A(x_B), y_B, mu_A))``
   with ``L_cls`` the mean over labelled organs ``c`` of ``|mean of the volume in c - mu[c]|`` and
   ``mu_B[c]`` the mean of the real labelled B training volumes in ``c``
   (:class:`medgan.losses.ClassMeanLoss`; a linear-kernel class-conditional MMD, Long et al. 2013)
2. Discriminators, on real volumes and on translated ones drawn from the image pools:
   ``L_D_A = 1/2 (L_adv(D_A(x_A), real) + L_adv(D_A(pool(G_B2A(x_B))), fake))``, same for D_B.
3. Segmenters, on real labelled volumes and (Zhang et al. sec. 3.3) on translated ones:
   ``L_S_A = L_seg(S_A(x_A), y_A) + lambda_seg_fake L_seg(S_A(G_B2A(x_B)), y_B)``, same for S_B.

``L_seg`` is Dice + cross-entropy over the labelled members of the batch. With
``optim.seg_pretrain_iters`` > 0 the run starts with that many iterations of step 3 on real
volumes only (no generator or discriminator update, no learning-rate schedule step), so the
shape-consistency term of step 1 is supervised by segmenters that already work when it starts;
the ``n_iters`` joint iterations (and ``shape_warmup_iters``, ``decay_start``) count after them.
With ``optim.seg_finetune_iters`` > 0 the run ends with that many iterations of step 3 alone,
the generators frozen: the segmenters keep learning from real labelled volumes and from volumes
the final generators translate (S_B on G_A2B(x_A) with y_A: the "train a segmenter on the
translated source" stage of CycleGAN-based adaptation, e.g. the FLARE CT -> MR entries), at
``seg_lr`` (constant, then linear to 0 over the second half), for far less compute per
iteration than a joint one.
Adam (lr 2e-4, betas
0.5/0.999) with a constant rate then a linear decay to 0. Patches of A and B are drawn
independently (unpaired). Loop, devices, DDP, bfloat16 autocast, checkpoints and the NaN guard:
:class:`medgan.training.Trainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medgan.data.transforms import DomainPreprocessor
from medgan.keys import Keys
from medgan.losses import AdversarialLoss, ClassMeanLoss, MaskedDiceCELoss, class_sums
from medgan.networks.checks import check_input_size
from medgan.training.engine import Trainer
from medgan.utils import ImagePool, read_losses, set_requires_grad
from medgan.viz import save_orthogonal_slices
from medgan.pipelines.cyclegan.config import CycleGANConfig, DomainConfig
from medgan.pipelines.cyclegan.model import PIPELINE, NetNames, build_networks
from medgan.pipelines.data_config import domain_preprocessor as _domain_preprocessor

logger = logging.getLogger(__name__)


def domain_preprocessor(config: CycleGANConfig, domain: DomainConfig) -> DomainPreprocessor:
    """The preprocessing of one domain of this pipeline."""
    return _domain_preprocessor(domain, config.train.spacing_mm, config.classes)


def linear_decay(n_iters: int, decay_start: int):  # noqa: ANN201
    """Learning-rate factor: 1 until ``decay_start``, then linear to 0 at ``n_iters``."""

    def factor(it: int) -> float:
        if it < decay_start:
            return 1.0
        return max(0.0, 1.0 - (it - decay_start) / max(1, n_iters - decay_start))

    return factor


class CycleGANTrainer(Trainer):
    """The shape-consistent CycleGAN on the training engine (:class:`~medgan.training.Trainer`).

    Args:
        config: the resolved config; ``config.train.output_dir`` receives ``checkpoints/``,
            ``losses.csv``, ``samples/*.png`` and (when tensorboard is installed) event files.
        resume: a checkpoint (or run folder) to continue from exactly.
        progress: show a progress bar.
    """

    pipeline = PIPELINE

    def __init__(self, config: CycleGANConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        self.names = NetNames.of(config)
        self.has_seg = bool(config.classes)
        super().__init__(config, resume, progress)
        self.summary_keys = ("G_total", self.names.d_a, self.names.d_b, f"cycle_{self.names.a}",
                             f"{self.names.s_a}_real", f"{self.names.s_b}_real")

    # ------------------------------------------------------------------ what the engine asks for
    def build_networks(self) -> nn.ModuleDict:
        nets = build_networks(self.cfg)
        check_input_size(dict(nets.items()), self.cfg.train.patch_size)
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o, n = self.cfg.optim, self.names
        groups = {"G": [n.g_ab, n.g_ba], "D": [n.d_a, n.d_b]}
        if self.has_seg:
            groups["S"] = [n.s_a, n.s_b]
        settings = {"G": (o.lr, o.betas), "D": (o.lr, o.betas), "S": (o.seg_lr or o.lr, o.seg_betas or o.betas)}
        return {g: torch.optim.Adam([p for k in ks for p in self.nets[k].parameters()], lr=settings[g][0], betas=settings[g][1])
                for g, ks in groups.items()}

    def build_schedulers(self) -> dict:
        o = self.cfg.optim
        decay_start = o.decay_start if o.decay_start is not None else o.n_iters // 2
        return {g: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(o.n_iters, decay_start)) for g, opt in self.optimizers.items()}

    def build_data(self) -> None:
        t = self.cfg.train
        self.pools = {self.names.a: ImagePool(t.pool_size, self.seed(1)), self.names.b: ImagePool(t.pool_size, self.seed(2))}
        self.gan_loss = AdversarialLoss(self.cfg.loss.gan_mode)
        self.seg_loss = MaskedDiceCELoss()
        self.l1 = nn.L1Loss()
        self.domain_datasets([self.cfg.domain_a, self.cfg.domain_b], lambda dom: domain_preprocessor(self.cfg, dom))
        if self.cfg.loss.lambda_class_intensity > 0:
            self.class_loss = ClassMeanLoss()
            self.class_means = {d: self.reference_class_means(d) for d in (self.names.a, self.names.b)}

    def reference_class_means(self, domain: str) -> torch.Tensor:
        """``(K,)`` mean intensity (networks' units) of each class over the labelled training volumes
        of ``domain``, pooled over voxels; NaN for a class they do not contain (never matched).
        Recomputed from the same data on resume, so nothing is stored."""
        k = len(self.cfg.classes) + 1
        sums, counts = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
        for v in self.datasets[domain].volumes:
            if v[Keys.HAS_LABEL.value]:
                s, c = class_sums(v[Keys.IMAGE.value][None], v[Keys.LABEL.value][None], k)
                sums, counts = sums + s[0].double(), counts + c[0].double()
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        known = {c: m for c, m in zip(self.cfg.classes, means[1:].tolist()) if m == m}
        if not known:
            logger.warning("loss.lambda_class_intensity: no labelled %s training volume, so nothing is translated into %s "
                           "with an organ-intensity target", domain, domain)
        else:
            logger.info("%s class means (networks' units): %s", domain, ", ".join(f"{c} {m:.3f}" for c, m in known.items()))
        return means.float().to(self.device)

    def total_iterations(self) -> int:
        o = self.cfg.optim
        return o.seg_pretrain_iters + o.n_iters + o.seg_finetune_iters

    def meta_extra(self) -> dict:
        return {"domains": [self.names.a, self.names.b], "classes": list(self.cfg.classes)}

    def joint_iteration(self, it: int) -> int:
        """``it`` counted from the first joint iteration: <= 0 during ``seg_pretrain_iters``,
        above ``n_iters`` during ``seg_finetune_iters``."""
        return it - self.cfg.optim.seg_pretrain_iters

    def checkpoint_now(self, it: int) -> bool:
        """A checkpoint at the end of the joint iterations when segmenter fine-tuning follows
        (its S_A/S_B before fine-tuning stay available)."""
        o = self.cfg.optim
        return bool(o.seg_finetune_iters) and it == o.seg_pretrain_iters + o.n_iters

    def rank_state(self) -> dict:
        return {"pools": {d: p.state_dict() for d, p in self.pools.items()}}

    def load_rank_state(self, state: dict | None) -> None:
        if state is not None and "pools" in state:
            for d, p in self.pools.items():
                p.load_state_dict(state["pools"][d], self.device)

    # ------------------------------------------------------------------ one iteration
    def step(self, it: int) -> dict[str, float]:
        joint_it = self.joint_iteration(it)
        seg_only = joint_it <= 0 or joint_it > self.cfg.optim.n_iters  # a segmenter-only stage
        logs = self.train_step(self.batch(self.names.a, it, seg_only), self.batch(self.names.b, it, seg_only))
        logs["lr"] = self.schedulers["G"].get_last_lr()[0]
        return logs

    def train_step(self, batch_a: dict, batch_b: dict) -> dict[str, float]:
        """One iteration on ``x (B, 1, D, H, W)`` in [-1, 1], ``y (B, 1, D, H, W)`` class indices,
        ``m (B,)`` labelled flags, for each domain: the generators', discriminators' and
        segmenters' updates (module docstring); during ``optim.seg_pretrain_iters``, the
        segmenters' update on the real volumes only; during ``optim.seg_finetune_iters``, the
        segmenters' update with the generators frozen. Returns the losses by name."""
        self._last = {"x_a": batch_a["x"], "y_a": batch_a["y"], "x_b": batch_b["x"], "y_b": batch_b["y"]}
        joint_it = self.joint_iteration(self.iteration)
        if joint_it <= 0:
            return self.segmenter_step(batch_a, batch_b, {}, seg_on=False)
        if joint_it > self.cfg.optim.n_iters:
            return self.segmenter_finetune_step(batch_a, batch_b, joint_it - self.cfg.optim.n_iters)
        seg_on = self.has_seg and joint_it > self.cfg.loss.shape_warmup_iters
        logs, fakes = self.generator_step(batch_a, batch_b, seg_on)
        logs.update(self.discriminator_step(batch_a, batch_b, fakes))
        if self.has_seg:
            logs.update(self.segmenter_step(batch_a, batch_b, fakes, seg_on))
        for s in self.schedulers.values():
            s.step()
        self._last.update(fakes)
        return logs

    def generator_step(self, batch_a: dict, batch_b: dict, seg_on: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Update G_A2B and G_B2A (Zhu Eq. 1-2 and sec. 5.2; Zhang Eq. 4) with D and S frozen."""
        n, lc = self.names, self.cfg.loss
        x_a, y_a, m_a = batch_a["x"], batch_a["y"], batch_a["m"]
        x_b, y_b, m_b = batch_b["x"], batch_b["y"], batch_b["m"]
        g_ab, g_ba = self.net(n.g_ab), self.net(n.g_ba)
        d_a, d_b = self.net(n.d_a, update=False), self.net(n.d_b, update=False)
        frozen = [self.nets[n.d_a], self.nets[n.d_b]] + ([self.nets[n.s_a], self.nets[n.s_b]] if self.has_seg else [])
        set_requires_grad(frozen, False)
        with self.autocast():
            fake_b, fake_a = g_ab(x_a), g_ba(x_b)
            rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
            terms = {f"{n.g_ab}_adv": self.gan_loss(d_b(fake_b), True, for_discriminator=False),
                     f"{n.g_ba}_adv": self.gan_loss(d_a(fake_a), True, for_discriminator=False),
                     f"cycle_{n.a}": self.l1(rec_a.float(), x_a), f"cycle_{n.b}": self.l1(rec_b.float(), x_b)}
            total = terms[f"{n.g_ab}_adv"] + terms[f"{n.g_ba}_adv"] + lc.lambda_cycle * (terms[f"cycle_{n.a}"] + terms[f"cycle_{n.b}"])
            if lc.lambda_identity > 0:
                terms["identity"] = self.l1(g_ab(x_b).float(), x_b) + self.l1(g_ba(x_a).float(), x_a)
                total = total + lc.lambda_identity * terms["identity"]
            if seg_on and lc.lambda_shape > 0:
                for name, seg, fake, y, m in ((f"shape_{n.a}2{n.b}", n.s_b, fake_b, y_a, m_a), (f"shape_{n.b}2{n.a}", n.s_a, fake_a, y_b, m_b)):
                    loss = self.seg_loss(self.net(seg, update=False)(fake), y, m)
                    if loss is not None:
                        total = total + lc.lambda_shape * loss
                        terms[name] = loss
            if lc.lambda_class_intensity > 0:
                for name, fake, y, m, ref in ((f"intensity_{n.b}", fake_b, y_a, m_a, self.class_means[n.b]),
                                              (f"intensity_{n.a}", fake_a, y_b, m_b, self.class_means[n.a])):
                    loss = self.class_loss(fake, y, m, ref)
                    if loss is not None:
                        total = total + lc.lambda_class_intensity * loss
                        terms[name] = loss
        self.update("G", total, terms)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["G_total"] = float(total.detach())
        fakes = {"fake_b": fake_b.detach(), "fake_a": fake_a.detach(), "rec_a": rec_a.detach(), "rec_b": rec_b.detach()}
        return logs, fakes

    def discriminator_step(self, batch_a: dict, batch_b: dict, fakes: dict) -> dict[str, float]:
        """Update D_A and D_B on real volumes and pooled translated ones (Zhu sec. 4)."""
        n = self.names
        set_requires_grad([self.nets[n.d_a], self.nets[n.d_b]], True)
        d_a, d_b = self.net(n.d_a), self.net(n.d_b)
        with self.autocast():
            pooled_a = self.pools[n.a].query(fakes["fake_a"])
            pooled_b = self.pools[n.b].query(fakes["fake_b"])
            loss_a = 0.5 * (self.gan_loss(d_a(batch_a["x"]), True) + self.gan_loss(d_a(pooled_a), False))
            loss_b = 0.5 * (self.gan_loss(d_b(batch_b["x"]), True) + self.gan_loss(d_b(pooled_b), False))
        self.update("D", loss_a + loss_b, {n.d_a: loss_a, n.d_b: loss_b})
        return {n.d_a: float(loss_a.detach()), n.d_b: float(loss_b.detach())}

    def segmenter_step(self, batch_a: dict, batch_b: dict, fakes: dict, seg_on: bool,
                       skip_unlabelled: bool = False) -> dict[str, float]:
        """Update S_A and S_B on real labelled volumes and, after the warm-up, on translated ones
        with their source's labels (Zhang et al. sec. 3.3); ``skip_unlabelled`` leaves out the
        parts without labels (they add nothing to the loss) instead of running them."""
        n, lc = self.names, self.cfg.loss
        set_requires_grad([self.nets[n.s_a], self.nets[n.s_b]], True)
        parts = [(f"{n.s_a}_real", n.a, batch_a["x"], batch_a["y"], batch_a["m"], 1.0),
                 (f"{n.s_b}_real", n.b, batch_b["x"], batch_b["y"], batch_b["m"], 1.0)]
        if seg_on and lc.lambda_seg_fake > 0:
            parts += [(f"{n.s_a}_fake", n.a, fakes["fake_a"], batch_b["y"], batch_b["m"], lc.lambda_seg_fake),
                      (f"{n.s_b}_fake", n.b, fakes["fake_b"], batch_a["y"], batch_a["m"], lc.lambda_seg_fake)]
        terms, labelled, total = {}, set(), None
        with self.autocast():
            for part, (name, domain, x, y, m, w) in enumerate(parts):
                if skip_unlabelled and not bool(m.any()):
                    continue
                # the domain's augmentation (augment: label synthesis, intensity), on the segmenters' inputs only
                pred = self.net(f"S_{domain}")(self.seg_input(domain, x, part, y, m))
                loss = self.joined(self.seg_loss(pred, y, m), pred)
                if loss is not None:
                    terms[name] = loss
                    total = w * loss if total is None else total + w * loss
                    if bool(m.any()):
                        labelled.add(name)
        if total is None:
            return {}
        self.update("S", total, terms)
        return {k: float(v.detach()) for k, v in terms.items() if k in labelled}

    def segmenter_finetune_step(self, batch_a: dict, batch_b: dict, k: int) -> dict[str, float]:
        """Iteration ``k`` (1-based) of ``optim.seg_finetune_iters``: both volumes translated by
        the frozen generators (no gradient), then :meth:`segmenter_step` on real and translated
        volumes. The segmenters' rate is set here, a function of ``k`` alone (resumable exactly):
        ``seg_lr`` until half-way, then linear to 0; the joint schedule is not stepped."""
        n, o = self.names, self.cfg.optim
        rate = (o.seg_lr or o.lr) * linear_decay(o.seg_finetune_iters, o.seg_finetune_iters // 2)(k - 1)
        for group in self.optimizers["S"].param_groups:
            group["lr"] = rate
        # a volume without labels teaches no segmenter here: its translation is skipped (not under
        # DDP, where every rank runs every part so the gradient all-reduce stays in step)
        every = self.dist.enabled
        with torch.no_grad(), self.autocast():
            fakes = {"fake_b": self.nets[n.g_ab](batch_a["x"]) if every or bool(batch_a["m"].any()) else None,
                     "fake_a": self.nets[n.g_ba](batch_b["x"]) if every or bool(batch_b["m"].any()) else None}
        self._last.update({k: v for k, v in fakes.items() if v is not None}, figure_pending=True)  # drawn only when due
        if fakes["fake_b"] is None and fakes["fake_a"] is None:
            return {"seg_lr": rate}
        return {**self.segmenter_step(batch_a, batch_b, fakes, seg_on=True, skip_unlabelled=not every), "seg_lr": rate}

    def save_samples(self, path: Path) -> Path:
        """PNG: real, translated (with the target segmenter's labels), reconstructed, per direction
        (``None`` while only the segmenters train: nothing translated yet)."""
        n, last = self.names, self._last
        if last.pop("figure_pending", False):  # the segmenter fine-tuning stage translated only what it needed
            with torch.no_grad(), self.autocast():
                last.setdefault("fake_b", self.nets[n.g_ab](last["x_a"]))
                last.setdefault("fake_a", self.nets[n.g_ba](last["x_b"]))
                last.update(rec_a=self.nets[n.g_ba](last["fake_b"]), rec_b=self.nets[n.g_ab](last["fake_a"]))
        if "fake_b" not in last:
            return None
        seg = {}
        if self.has_seg:
            with torch.no_grad():
                seg["b"] = self.nets[n.s_b](last["fake_b"][:1]).argmax(1)[0].cpu().numpy()
                seg["a"] = self.nets[n.s_a](last["fake_a"][:1]).argmax(1)[0].cpu().numpy()

        def v(k: str) -> np.ndarray:
            return last[k][0, 0].float().cpu().numpy()

        rows = [
            (f"real {n.a} + labels", v("x_a"), v("y_a") if self.has_seg else None),
            (f"{n.g_ab}(x) + {n.s_b}", v("fake_b"), seg.get("b")),
            (f"reconstructed {n.a}", v("rec_a"), None),
            (f"real {n.b} + labels", v("x_b"), v("y_b") if self.has_seg else None),
            (f"{n.g_ba}(x) + {n.s_a}", v("fake_a"), seg.get("a")),
            (f"reconstructed {n.b}", v("rec_b"), None),
        ]
        return save_orthogonal_slices(path, rows, self.cfg.train.spacing_mm)


def train(config: CycleGANConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a shape-consistent CycleGAN; returns the final checkpoint folder."""
    return CycleGANTrainer(config, resume=resume, progress=progress).fit()


__all__ = ["CycleGANTrainer", "read_losses", "train"]
