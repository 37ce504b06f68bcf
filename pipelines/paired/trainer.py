"""Training of paired MR -> CT translation (pix2pix 3D or masked-L1 regression).

One iteration on a patch of a registered pair ``(x, y)`` with its mask ``m`` (the same crop of
all three, centred inside the mask), after Isola et al., CVPR 2017:

1. pix2pix only, discriminator (G frozen): ``L_D = 1/2 (L_adv(D(y, x), real) + L_adv(D(G(x), x), fake))``
   (Eq. 1, halved as in the reference code);
2. generator: ``L_G = L_adv(D(G(x), x), real) + lambda_l1 |y - G(x)|_1,m`` (Eq. 4, lambda 100) for
   pix2pix; ``|y - G(x)|_1,m`` alone for regression; either ``+ lambda_perception L_perc`` (the
   features of a frozen CT segmenter, :class:`medgan.losses.SegmentationPerceptionLoss`).

``|.|_1,m`` is the mean absolute error inside the mask (:func:`medgan.losses.masked_l1`). Adam
(2e-4, betas 0.5/0.999), constant then linear decay to 0. Loop, devices, DDP, bfloat16 autocast,
checkpoints and the NaN guard: :class:`medgan.training.Trainer`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import FgBgToIndicesd, SpatialPad
from torch import nn

from medgan.data.intensity import mean_scaling
from medgan.data.transforms import DomainPreprocessor, PatchDataset, held_out_slices, to_canonical
from medgan.io import check_same_grid, read_label_map, read_volume
from medgan.keys import Keys
from medgan.losses import AdversarialLoss, SegmentationPerceptionLoss, masked_l1
from medgan.networks.checks import check_input_size
from medgan.qa import training_statistics
from medgan.training.engine import Trainer
from medgan.utils import set_requires_grad
from medgan.viz import save_orthogonal_slices
from medgan.pipelines.cyclegan.trainer import linear_decay
from medgan.pipelines.paired.config import PairedConfig, PairedDomain
from medgan.pipelines.paired.model import PIPELINE, build_networks, discriminator_name, generator_name

logger = logging.getLogger(__name__)


def paired_preprocessor(config: PairedConfig, domain: PairedDomain) -> DomainPreprocessor:
    """The preprocessing of one side of the pair (spacing and intensity scaling; no labels)."""
    i = domain.intensity
    return DomainPreprocessor(spacing_mm=config.train.spacing_mm, scaling_kind=i.kind, window=i.window, percentiles=i.percentiles)


def paired_volume(config: PairedConfig, entry: dict) -> tuple[dict, tuple, tuple[dict, dict]]:
    """One pair -> a :class:`PatchDataset` item whose ``image`` is ``(3, D, H, W)``: input, target
    (both in [-1, 1]) and mask (0/1; without a mask file the target CT's body mask) on the
    training grid, with the mask as the crop ``label``;
    the inferior ``train.holdout_fraction`` of its axial slices left out. Also returns both
    sides' intensity scalings and training statistics.

    Raises:
        VolumeError: target or mask not on the input's grid (names both files and grids).
    """
    src, tgt = paired_preprocessor(config, config.source), paired_preprocessor(config, config.target)
    vol, tvol = read_volume(entry["image"]), read_volume(entry["target"])
    check_same_grid(tvol, vol, f"{config.target.name} target", f"its {config.source.name} input")
    x, s_scaling = src.image(vol)
    y, t_scaling = tgt.image(tvol)
    if entry.get("mask"):
        mask = read_label_map(entry["mask"], vol)
        mask.array = (mask.array > 0).astype(np.float32)
        m = to_canonical(mask, config.train.spacing_mm, "nearest")
    else:  # SynthRAD's masks are body outlines: without one, the target CT's body mask stands in
        logger.info("%s: no mask given; the loss is restricted to the target CT's body mask (HU > -500, "
                    "largest component, holes filled: medgan.data.masks.body_mask)", entry["image"])
        m = MetaTensor(torch.from_numpy(tgt.body_mask(y)[None].astype(np.float32)), affine=y.affine)
    k = held_out_slices(x.shape[-1], config.train.holdout_fraction)
    if k:
        x, y, m = x[..., k:], y[..., k:], m[..., k:]
    stats = (src.statistics(x, vol.grid, src.body_mask(x)), tgt.statistics(y, tvol.grid, tgt.body_mask(y)))
    p = config.train.patch_size
    image = torch.cat([SpatialPad(p, value=-1.0)(x).as_tensor(), SpatialPad(p, value=-1.0)(y).as_tensor(),
                       SpatialPad(p, value=0.0)(m).as_tensor()]).float()
    item = {Keys.IMAGE.value: image, Keys.LABEL.value: image[2:3].round().long(), Keys.HAS_LABEL.value: True}
    return FgBgToIndicesd(keys=Keys.LABEL.value)(item), (s_scaling, t_scaling), stats


def perception_encoder(config: PairedConfig) -> nn.Module:
    """The encoder of ``S_<target>`` from the CycleGAN checkpoint ``loss.perception_checkpoint``.

    Raises:
        CheckpointError: not a CycleGAN checkpoint with that segmenter.
        ValueError: trained at another spacing or HU window (its features would mean something else).
    """
    from medgan.checkpoint import CheckpointError, load_networks, open_checkpoint
    from medgan.networks.segmenters import UNetEncoder
    from medgan.pipelines.cyclegan.config import CycleGANConfig
    from medgan.pipelines.cyclegan.model import PIPELINE as CYCLEGAN, build_networks as cyclegan_networks

    folder, _, seg_cfg = open_checkpoint(config.loss.perception_checkpoint, CYCLEGAN, CycleGANConfig)
    name = f"S_{config.target.name}"
    nets = cyclegan_networks(seg_cfg)
    if name not in nets:
        raise CheckpointError(f"{folder}: no {name} segmenter (that model has no classes configured)")
    if tuple(seg_cfg.train.spacing_mm) != tuple(config.train.spacing_mm):
        raise ValueError(f"{folder}: {name} was trained at {seg_cfg.train.spacing_mm} mm, this model at "
                         f"{config.train.spacing_mm} mm; the perception features need the same spacing")
    seg_window = seg_cfg.domain(config.target.name).intensity
    mine = config.target.intensity
    if (seg_window.kind, tuple(seg_window.window), seg_window.knots) != (mine.kind, tuple(mine.window), mine.knots):
        raise ValueError(f"{folder}: {name} reads {seg_window.kind} {seg_window.window} knots {seg_window.knots}, this "
                         f"model's {config.target.name} is {mine.kind} {mine.window} knots {mine.knots}; they must match")
    load_networks(folder, {name: nets[name]})
    return UNetEncoder(nets[name])


class PairedTrainer(Trainer):
    """Paired translation on the training engine (:class:`~medgan.training.Trainer`).

    Args:
        config: the resolved config; ``config.train.output_dir`` receives ``checkpoints/``,
            ``losses.csv`` and ``samples/*.png``.
        resume: a checkpoint (or run folder) to continue from exactly.
        progress: show a progress bar.
    """

    pipeline = PIPELINE

    def __init__(self, config: PairedConfig, resume: str | Path | None = None, progress: bool = True) -> None:
        self.g_name, self.d_name = generator_name(config), discriminator_name(config)
        self.pix2pix = config.model == "pix2pix"
        super().__init__(config, resume, progress)
        self.summary_keys = ("G_total", "l1") + ((self.d_name,) if self.pix2pix else ())

    def build_networks(self) -> nn.ModuleDict:
        nets = build_networks(self.cfg)
        check_input_size({self.g_name: nets[self.g_name]}, self.cfg.train.patch_size)
        if self.pix2pix:  # D sees (output, input) on two channels
            check_input_size({self.d_name: nets[self.d_name].net}, self.cfg.train.patch_size, in_channels=2)
        return nets

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        groups = {"G": self.g_name, **({"D": self.d_name} if self.pix2pix else {})}
        return {g: torch.optim.Adam(self.nets[n].parameters(), lr=o.lr, betas=o.betas) for g, n in groups.items()}

    def build_schedulers(self) -> dict:
        o = self.cfg.optim
        decay_start = o.decay_start if o.decay_start is not None else o.n_iters // 2
        return {g: torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(o.n_iters, decay_start)) for g, opt in self.optimizers.items()}

    def build_data(self) -> None:
        t, c = self.cfg.train, self.cfg
        self.gan_loss = AdversarialLoss(c.loss.gan_mode)
        self.perception = (SegmentationPerceptionLoss(perception_encoder(c), c.loss.perception_levels).to(self.device)
                           if c.loss.lambda_perception > 0 else None)
        entries = c.data.datalist()
        if not entries:
            raise ValueError("no training pairs")
        made = [paired_volume(c, e) for e in entries]
        items = [m[0] for m in made]
        logger.info("paired: %d pairs", len(items))
        self.datasets = {"pairs": PatchDataset(items, t.patch_size, seed=self.seed(0), length=self.total_iterations() * t.batch_size,
                                               pos=t.crop_pos, neg=t.crop_neg)}
        for side, domain in enumerate((c.source, c.target)):
            self.normalization[domain.name] = {"kind": domain.intensity.kind, **mean_scaling([m[1][side] for m in made]).to_dict()}
            self.training_stats[domain.name] = training_statistics([m[2][side] for m in made])

    def total_iterations(self) -> int:
        return self.cfg.optim.n_iters

    def meta_extra(self) -> dict:
        return {"domains": [self.cfg.source.name, self.cfg.target.name], "model": self.cfg.model, "classes": []}

    def step(self, it: int) -> dict[str, float]:
        b = self.batch("pairs", it)
        x, y, m = b["x"][:, 0:1], b["x"][:, 1:2], b["x"][:, 2:3]
        logs = self.train_step(x, y, m)
        logs["lr"] = self.schedulers["G"].get_last_lr()[0]
        return logs

    def train_step(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> dict[str, float]:
        """One iteration on ``x`` (input), ``y`` (target) ``(B, 1, D, H, W)`` in [-1, 1] and the
        mask ``m`` ``(B, 1, D, H, W)`` (module docstring). Returns the losses by name."""
        lc, logs = self.cfg.loss, {}
        g = self.net(self.g_name)
        with self.autocast():
            fake = g(x)
        if self.pix2pix:
            set_requires_grad([self.nets[self.d_name]], True)
            d = self.net(self.d_name)
            with self.autocast():
                loss_d = 0.5 * (self.gan_loss(d(y, x), True) + self.gan_loss(d(fake.detach(), x), False))
            self.update("D", loss_d, {self.d_name: loss_d})
            logs[self.d_name] = float(loss_d.detach())
            set_requires_grad([self.nets[self.d_name]], False)
        with self.autocast():
            terms = {"l1": masked_l1(fake, y, m)}
            total = terms["l1"] * (lc.lambda_l1 if self.pix2pix else 1.0)
            if self.pix2pix:
                terms[f"{self.g_name}_adv"] = self.gan_loss(self.net(self.d_name, update=False)(fake, x), True, for_discriminator=False)
                total = total + terms[f"{self.g_name}_adv"]
            if self.perception is not None:
                terms["perception"] = self.perception(fake.float(), y, m)
                total = total + lc.lambda_perception * terms["perception"]
        self.update("G", total, terms)
        for s in self.schedulers.values():
            s.step()
        logs.update({k: float(v.detach()) for k, v in terms.items()})
        logs["G_total"] = float(total.detach())
        self._last = {"x": x, "y": y, "fake": fake.detach(), "m": m}
        return logs

    def save_samples(self, path: Path) -> Path:
        """PNG: input, real target, output (mask overlaid on the target), of the last patch."""
        last, s, t = self._last, self.cfg.source.name, self.cfg.target.name

        def v(k: str) -> np.ndarray:
            return last[k][0, 0].float().cpu().numpy()

        rows = [(f"{s} input", v("x"), None), (f"real {t} + mask", v("y"), v("m")), (f"{self.g_name}(x)", v("fake"), None)]
        return save_orthogonal_slices(path, rows, self.cfg.train.spacing_mm)


def train(config: PairedConfig, resume: str | Path | None = None, progress: bool = True) -> Path:
    """Train a paired model; returns the final checkpoint folder."""
    return PairedTrainer(config, resume=resume, progress=progress).fit()
