"""Training of the shape-consistent CycleGAN.

One iteration (A = domain_a, e.g. CT; B = domain_b, e.g. MR), after Zhu et al., ICCV 2017 and
Zhang, Yang & Zheng, CVPR 2018 (arXiv 1802.09655):

1. Generators (D and S frozen):
   ``L_G = L_adv(D_B(G_A2B(x_A)), real) + L_adv(D_A(G_B2A(x_B)), real)``            (Zhu Eq. 1)
   ``    + lambda_cycle (|G_B2A(G_A2B(x_A)) - x_A|_1 + |G_A2B(G_B2A(x_B)) - x_B|_1)``  (Zhu Eq. 2)
   ``    + lambda_identity (|G_A2B(x_B) - x_B|_1 + |G_B2A(x_A) - x_A|_1)``             (Zhu sec. 5.2)
   ``    + lambda_shape (L_seg(S_B(G_A2B(x_A)), y_A) + L_seg(S_A(G_B2A(x_B)), y_B))``   (Zhang Eq. 4)
2. Discriminators, on real volumes and on translated ones drawn from the image pools:
   ``L_D_A = 1/2 (L_adv(D_A(x_A), real) + L_adv(D_A(pool(G_B2A(x_B))), fake))``, same for D_B.
3. Segmenters, on real labelled volumes and (Zhang et al. sec. 3.3) on translated ones:
   ``L_S_A = L_seg(S_A(x_A), y_A) + lambda_seg_fake L_seg(S_A(G_B2A(x_B)), y_B)``, same for S_B.

``L_seg`` is Dice + cross-entropy over the labelled members of the batch. Adam (lr 2e-4, betas
0.5/0.999) with a constant rate then a linear decay to 0. Patches of A and B are drawn
independently (unpaired). Mixed precision (bfloat16 autocast) on CUDA.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

import medgan
from medgan.checkpoint import load_networks, load_training_state, read_meta, resolve_checkpoint, save_checkpoint
from medgan.config import dump_config
from medgan.data.intensity import mean_scaling
from medgan.data.transforms import DomainPreprocessor, PatchDataset
from medgan.keys import Keys
from medgan.losses import AdversarialLoss, MaskedDiceCELoss
from medgan.networks.checks import check_input_size
from medgan.utils import ImagePool, LossLog, read_losses, resolve_device, rng_state, seed_everything, set_requires_grad, set_rng_state
from medgan.viz import save_orthogonal_slices
from pipelines.cyclegan.config import CycleGANConfig, DomainConfig
from pipelines.cyclegan.model import PIPELINE, NetNames, build_networks
from pipelines.data_config import domain_preprocessor as _domain_preprocessor

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


class CycleGANTrainer:
    """Builds data, networks, optimizers from a :class:`CycleGANConfig` and trains.

    Args:
        config: the resolved config; ``config.train.output_dir`` receives ``checkpoints/``,
            ``losses.csv``, ``samples/*.png`` and (when tensorboard is installed) event files.
        resume: a checkpoint (or run folder) to continue from exactly.
        progress: show a progress bar.
    """

    def __init__(self, config: CycleGANConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        self.cfg = config
        self.names = NetNames.of(config)
        self.device = resolve_device(config.train.device)
        self.use_amp = bool(config.train.amp and self.device.type == "cuda")
        self.progress = progress
        self.out = Path(config.train.output_dir)
        seed_everything(config.train.seed)

        self.nets = build_networks(config).to(self.device)
        check_input_size(dict(self.nets.items()), config.train.patch_size)
        self.has_seg = bool(config.classes)
        t, o = config.train, config.optim
        groups = {"G": [self.names.g_ab, self.names.g_ba], "D": [self.names.d_a, self.names.d_b]}
        if self.has_seg:
            groups["S"] = [self.names.s_a, self.names.s_b]
        self.groups = groups
        self.optimizers = {
            g: torch.optim.Adam([p for n in ns for p in self.nets[n].parameters()], lr=o.lr, betas=o.betas)
            for g, ns in groups.items()
        }
        decay_start = o.decay_start if o.decay_start is not None else o.n_iters // 2
        self.schedulers = {
            g: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(o.n_iters, decay_start))
            for g, opt in self.optimizers.items()
        }
        self.pools = {self.names.a: ImagePool(t.pool_size, t.seed + 1), self.names.b: ImagePool(t.pool_size, t.seed + 2)}
        self.gan_loss = AdversarialLoss(config.loss.gan_mode)
        self.seg_loss = MaskedDiceCELoss()
        self.l1 = nn.L1Loss()
        self.iteration = 0

        self.datasets, scalings = {}, {}
        for i, dom in enumerate((config.domain_a, config.domain_b)):
            pre = domain_preprocessor(config, dom)
            entries = dom.data.datalist()
            vols, sc = [], []
            for e in entries:
                v, s = pre.training_volume(e, t.patch_size)
                vols.append(v)
                sc.append(s)
            n_lab = sum(v[Keys.HAS_LABEL.value] for v in vols)
            logger.info("%s: %d volumes (%d labelled)", dom.name, len(vols), n_lab)
            scalings[dom.name] = mean_scaling(sc)
            self.datasets[dom.name] = PatchDataset(
                vols, t.patch_size, seed=t.seed * 1000 + i, length=o.n_iters * t.batch_size, pos=t.crop_pos, neg=t.crop_neg
            )
        self.normalization = {
            d.name: {"kind": d.intensity.kind, **scalings[d.name].to_dict()} for d in (config.domain_a, config.domain_b)
        }
        if resume is not None:
            self.load(resume)

    # ------------------------------------------------------------------ state
    def meta(self) -> dict:
        return {
            "pipeline": PIPELINE,
            "medgan_version": medgan.__version__,
            "iteration": self.iteration,
            "domains": [self.names.a, self.names.b],
            "classes": list(self.cfg.classes),
            "normalization": self.normalization,
        }

    def training_state(self) -> dict:
        return {
            "iteration": self.iteration,
            "optimizers": {g: o.state_dict() for g, o in self.optimizers.items()},
            "schedulers": {g: s.state_dict() for g, s in self.schedulers.items()},
            "pools": {d: p.state_dict() for d, p in self.pools.items()},
            "rng": rng_state(),
        }

    def save(self) -> Path:
        """Write ``checkpoints/iter_XXXXXX`` (full state) and return its path."""
        folder = self.out / "checkpoints" / f"iter_{self.iteration:06d}"
        path = save_checkpoint(folder, dict(self.nets.items()), self.meta(), dump_config(self.cfg), self.training_state())
        logger.info("checkpoint: %s", path)
        return path

    def load(self, checkpoint: str | Path) -> None:
        """Restore everything from a checkpoint so training continues exactly."""
        folder = resolve_checkpoint(checkpoint, need_state=True)
        read_meta(folder, PIPELINE)
        load_networks(folder, dict(self.nets.items()))
        state = load_training_state(folder)
        for g, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][g])
        for g, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][g])
        for d, p in self.pools.items():
            p.load_state_dict(state["pools"][d], self.device)
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        logger.info("resumed from %s at iteration %d", folder, self.iteration)

    # ------------------------------------------------------------------ step
    def _batch(self, name: str, it: int) -> dict:
        ds, b = self.datasets[name], self.cfg.train.batch_size
        items = [ds[(it - 1) * b + j] for j in range(b)]
        return {
            "x": torch.stack([i[Keys.IMAGE.value] for i in items]).to(self.device),
            "y": torch.stack([i[Keys.LABEL.value] for i in items]).to(self.device),
            "m": torch.tensor([i[Keys.HAS_LABEL.value] for i in items], device=self.device),
        }

    def train_step(self, batch_a: dict, batch_b: dict) -> dict[str, float]:
        """One iteration on ``x (B, 1, D, H, W)`` in [-1, 1], ``y (B, 1, D, H, W)`` class indices,
        ``m (B,)`` labelled flags, for each domain. Returns the losses by name."""
        n, lc, nets = self.names, self.cfg.loss, self.nets
        x_a, y_a, m_a = batch_a["x"], batch_a["y"], batch_a["m"]
        x_b, y_b, m_b = batch_b["x"], batch_b["y"], batch_b["m"]
        seg_on = self.has_seg and self.iteration > lc.shape_warmup_iters
        logs: dict[str, float] = {}
        amp = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp)

        # 1. generators
        frozen = [nets[n.d_a], nets[n.d_b]] + ([nets[n.s_a], nets[n.s_b]] if self.has_seg else [])
        set_requires_grad(frozen, False)
        with amp:
            fake_b = nets[n.g_ab](x_a)
            fake_a = nets[n.g_ba](x_b)
            rec_a = nets[n.g_ba](fake_b)
            rec_b = nets[n.g_ab](fake_a)
            terms = {
                f"{n.g_ab}_adv": self.gan_loss(nets[n.d_b](fake_b), True, for_discriminator=False),
                f"{n.g_ba}_adv": self.gan_loss(nets[n.d_a](fake_a), True, for_discriminator=False),
            }
            cyc_a, cyc_b = self.l1(rec_a.float(), x_a), self.l1(rec_b.float(), x_b)
            total = terms[f"{n.g_ab}_adv"] + terms[f"{n.g_ba}_adv"] + lc.lambda_cycle * (cyc_a + cyc_b)
            terms[f"cycle_{n.a}"], terms[f"cycle_{n.b}"] = cyc_a, cyc_b
            if lc.lambda_identity > 0:
                idt = self.l1(nets[n.g_ab](x_b).float(), x_b) + self.l1(nets[n.g_ba](x_a).float(), x_a)
                total = total + lc.lambda_identity * idt
                terms["identity"] = idt
            if seg_on and lc.lambda_shape > 0:
                for name, seg, fake, y, m in ((f"shape_{n.a}2{n.b}", n.s_b, fake_b, y_a, m_a), (f"shape_{n.b}2{n.a}", n.s_a, fake_a, y_b, m_b)):
                    loss = self.seg_loss(nets[seg](fake), y, m)
                    if loss is not None:
                        total = total + lc.lambda_shape * loss
                        terms[name] = loss
        self.optimizers["G"].zero_grad(set_to_none=True)
        total.backward()
        self.optimizers["G"].step()
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        logs["G_total"] = float(total.detach())

        # 2. discriminators
        set_requires_grad([nets[n.d_a], nets[n.d_b]], True)
        with amp:
            pooled_a = self.pools[n.a].query(fake_a.detach())
            pooled_b = self.pools[n.b].query(fake_b.detach())
            loss_d_a = 0.5 * (self.gan_loss(nets[n.d_a](x_a), True) + self.gan_loss(nets[n.d_a](pooled_a), False))
            loss_d_b = 0.5 * (self.gan_loss(nets[n.d_b](x_b), True) + self.gan_loss(nets[n.d_b](pooled_b), False))
        self.optimizers["D"].zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        self.optimizers["D"].step()
        logs[n.d_a], logs[n.d_b] = float(loss_d_a.detach()), float(loss_d_b.detach())

        # 3. segmenters
        if self.has_seg:
            set_requires_grad([nets[n.s_a], nets[n.s_b]], True)
            seg_total = None
            with amp:
                parts = [
                    (f"{n.s_a}_real", n.s_a, x_a, y_a, m_a, 1.0),
                    (f"{n.s_b}_real", n.s_b, x_b, y_b, m_b, 1.0),
                ]
                if seg_on and lc.lambda_seg_fake > 0:
                    parts += [
                        (f"{n.s_a}_fake", n.s_a, fake_a.detach(), y_b, m_b, lc.lambda_seg_fake),
                        (f"{n.s_b}_fake", n.s_b, fake_b.detach(), y_a, m_a, lc.lambda_seg_fake),
                    ]
                for name, seg, x, y, m, w in parts:
                    loss = self.seg_loss(nets[seg](x), y, m)
                    if loss is not None:
                        logs[name] = float(loss.detach())
                        seg_total = w * loss if seg_total is None else seg_total + w * loss
            if seg_total is not None:
                self.optimizers["S"].zero_grad(set_to_none=True)
                seg_total.backward()
                self.optimizers["S"].step()
        for s in self.schedulers.values():
            s.step()
        self._last = {"x_a": x_a, "y_a": y_a, "fake_b": fake_b.detach(), "rec_a": rec_a.detach(),
                      "x_b": x_b, "y_b": y_b, "fake_a": fake_a.detach(), "rec_b": rec_b.detach()}
        for k, v in logs.items():
            if not math.isfinite(v):
                raise FloatingPointError(f"loss {k} became {v} at iteration {self.iteration}; lower optim.lr or check the data")
        return logs

    # ------------------------------------------------------------------ loop
    def fit(self, n_iters: int | None = None) -> Path:
        """Train until ``n_iters`` (default ``optim.n_iters``); returns the last checkpoint."""
        t = self.cfg.train
        end = int(n_iters or self.cfg.optim.n_iters)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(dump_config(self.cfg))
        log = LossLog(self.out / "losses.csv", self.iteration)
        writer = _tensorboard(self.out)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.nets.train()
        ckpt = None
        with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.fields[msg]}"), disable=not self.progress) as bar:
            task = bar.add_task("train", total=end, completed=self.iteration, msg="")
            while self.iteration < end:
                self.iteration += 1
                it = self.iteration
                logs = self.train_step(self._batch(self.names.a, it), self._batch(self.names.b, it))
                logs["lr"] = self.schedulers["G"].get_last_lr()[0]
                log.write(it, logs)
                if writer is not None:
                    for k, v in logs.items():
                        writer.add_scalar(k, v, it)
                if it % t.log_every == 0 or it == end:
                    msg = " ".join(f"{k}={v:.3f}" for k, v in logs.items() if k in ("G_total", self.names.d_a, self.names.d_b, f"cycle_{self.names.a}"))
                    logger.info("iter %d %s", it, msg)
                    bar.update(task, msg=msg)
                if it % t.png_every == 0 or it == end:
                    self.save_samples(self.out / "samples" / f"iter_{it:06d}.png")
                if it % t.checkpoint_every == 0 or it == end:
                    ckpt = self.save()
                bar.update(task, completed=it)
        log.close()
        if writer is not None:
            writer.close()
        return ckpt if ckpt is not None else self.save()

    def save_samples(self, path: Path) -> Path:
        """PNG: real, translated (with the target segmenter's labels), reconstructed, per direction."""
        n, last = self.names, self._last
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


def _tensorboard(out: Path):  # noqa: ANN202
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(config: CycleGANConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a shape-consistent CycleGAN; returns the final checkpoint folder."""
    return CycleGANTrainer(config, resume=resume, progress=progress).fit()


__all__ = ["CycleGANTrainer", "read_losses", "train"]
