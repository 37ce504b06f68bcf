"""Training augmentation of a domain's patches: spatial (image and label together) and intensity
(the segmenters' inputs only), both MONAI transforms, seeded per item so that a resumed run
draws exactly what an uninterrupted one would.

- **Spatial** (:class:`SpatialAugment`): MONAI ``RandAffined`` (rotation about each axis, scaling
  of each axis by its own factor) on a crop larger than the patch, resampled to the patch size: what the networks see
  varies in pose and size although the data is one subject (the benchmark's labelled CT side).
  Zero padding of the resampling would be grey in [-1, 1], so the image is shifted to [0, 2]
  around it: outside the volume is the lowest intensity (air), as for the patch padding.
- **Intensity** (:class:`IntensityAugment`): MONAI ``RandBiasField``, ``RandHistogramShift``,
  ``RandGibbsNoise`` and ``RandAdjustContrast``, each with its own probability, the contrast and
  protocol variation a segmenter should be robust to (the "modality-robust segmenter" lever of
  medgan issue 15; e.g. Billot et al., SynthSeg, MedIA 2023, for the rationale). Applied only to
  what a segmenter trains on: a CycleGAN's discriminators and cycle losses see the volumes as
  they are, so a synthetic CT keeps its HU.
- **Label-driven synthesis** (:class:`LabelSynthesis`): a labelled input replaced by an image
  drawn from its label map, each tissue with a random intensity (domain randomization, Billot et
  al., SynthSeg, MedIA 2023): the segmenter learns shapes, not one modality's contrast. Also
  segmenters' inputs only, before the intensity augmentation.
- **Test-time** (:class:`SegmentationTTA`): views of a whole volume drawn from that same training
  distribution, each with the inverse that maps a prediction on the view back onto the volume's
  grid, for averaging a segmenter's probabilities over the views (test-time augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    GaussianSmooth,
    RandAdjustContrast,
    RandAffine,
    RandAffined,
    RandBiasField,
    RandGibbsNoise,
    RandHistogramShift,
)

from medgan.keys import Keys

#: the crop taken around a patch before a spatial augmentation, per unit of patch size: room for
#: a rotation of up to about 15 degrees and a down-scaling of 15 % without reaching its corners
SPATIAL_MARGIN = 1.3


class SpatialAugment:
    """Random rotation (``rotate_deg`` about each axis, uniform in +-) and scaling of each axis
    by its own factor, uniform in ``1 +- scale`` (MONAI draws one per axis: body size and shape
    vary, not only size) of an ``image (1, D, H, W)`` in [-1, 1] and its ``label`` with probability
    ``prob``, resampled (bilinear / nearest) onto a ``patch_size`` grid at the crop's centre.

    Raises:
        ValueError: a negative range or a probability outside [0, 1].
    """

    def __init__(self, patch_size: Sequence[int], rotate_deg: float, scale: float, prob: float) -> None:
        if rotate_deg < 0 or scale < 0 or not 0 <= prob <= 1:
            raise ValueError(f"spatial augmentation: rotate_deg {rotate_deg} and scale {scale} must be >= 0, prob {prob} in [0, 1]")
        r = math.radians(rotate_deg)
        keys = [Keys.IMAGE.value, Keys.LABEL.value]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.crop_size = tuple(int(math.ceil(p * SPATIAL_MARGIN)) for p in self.patch_size)
        self.affine = RandAffined(keys=keys, spatial_size=self.patch_size, prob=prob, rotate_range=(r, r, r),
                                  scale_range=(scale, scale, scale), mode=("bilinear", "nearest"),
                                  padding_mode="zeros", lazy=False)

    def __call__(self, item: dict, seed: int) -> dict:
        """``item`` with ``image`` and ``label`` of the crop size -> the same keys at ``patch_size``."""
        self.affine.set_random_state(seed=seed)
        shifted = {**item, Keys.IMAGE.value: item[Keys.IMAGE.value] + 1.0, Keys.LABEL.value: item[Keys.LABEL.value].float()}
        out = self.affine(shifted)
        return {**item, Keys.IMAGE.value: _plain(out[Keys.IMAGE.value]).float() - 1.0,
                Keys.LABEL.value: _plain(out[Keys.LABEL.value]).round().long()}


class IntensityAugment:
    """Random bias field, histogram shift, Gibbs ringing and gamma contrast of a batch ``x (B, 1,
    D, H, W)`` in [-1, 1], each with its probability; the result is clipped to [-1, 1].

    The bias field multiplies the intensities in [0, 1] (``(x + 1) / 2``), where air stays dark.
    """

    def __init__(self, bias_field: float = 0.0, histogram_shift: float = 0.0, gibbs: float = 0.0,
                 contrast: float = 0.0) -> None:
        for name, p in (("bias_field", bias_field), ("histogram_shift", histogram_shift), ("gibbs", gibbs), ("contrast", contrast)):
            if not 0 <= p <= 1:
                raise ValueError(f"intensity augmentation: {name} probability {p} must lie in [0, 1]")
        self.bias = RandBiasField(coeff_range=(0.0, 0.3), prob=bias_field) if bias_field else None
        rest = [RandHistogramShift(num_control_points=(5, 10), prob=histogram_shift) if histogram_shift else None,
                RandGibbsNoise(prob=gibbs, alpha=(0.0, 0.6)) if gibbs else None,
                RandAdjustContrast(prob=contrast, gamma=(0.6, 1.6)) if contrast else None]
        self.rest = Compose([t for t in rest if t is not None]) if any(t is not None for t in rest) else None

    @property
    def active(self) -> bool:
        return self.bias is not None or self.rest is not None

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.active:
            return x
        rng = np.random.default_rng(seed)
        out = []
        for sample in x.detach().float().cpu():
            s = sample
            if self.bias is not None:
                self.bias.set_random_state(seed=int(rng.integers(2**31 - 1)))
                s = _plain(self.bias((s + 1.0) / 2.0)) * 2.0 - 1.0
            if self.rest is not None:
                self.rest.set_random_state(seed=int(rng.integers(2**31 - 1)))
                s = _plain(self.rest(s))
            out.append(s.clamp(-1.0, 1.0))
        return torch.stack(out).to(x.device, x.dtype)


class LabelSynthesis:
    """Replace each labelled sample of a batch ``x (B, 1, D, H, W)`` in [-1, 1], with probability
    ``prob``, by an image synthesized from its label map ``y (B, 1, D, H, W)`` (class indices),
    after SynthSeg's generative model (Billot et al., "SynthSeg: Segmentation of brain MRI scans of
    any contrast and resolution without retraining", MedIA 86, 2023, sec. 3.1):

    1. generation labels: each class ``c > 0`` of ``y`` is one label; every other voxel (background
       and :data:`~medgan.keys.UNLABELLED`) gets one of ``levels`` labels by its own intensity
       (``levels`` equal bins of [-1, 1]: air, fat, soft tissue, bone of a CT are apart), since the
       label maps name a few organs and SynthSeg needs every tissue labelled;
    2. a Gaussian mixture: label ``g`` gets mean ``U(0, 1)`` and standard deviation ``U(0, max_std)``
       (SynthSeg's ``U(0, 225)`` and ``U(0, 25)`` of 255), every voxel drawn from its label's;
    3. partial volume and slice thickness: a Gaussian blur of ``U(0, max_blur)`` voxels per axis
       (MONAI ``GaussianSmooth``; the last axis is the slice axis of thick-slice scans);
    4. rescaled to [-1, 1] between its 0.5 and 99.5 percentiles, then clipped.

    The bias field and gamma of SynthSeg's step 4 are the intensity augmentation's
    (:class:`IntensityAugment`), applied after this. The labels are unchanged, so the segmenter
    learns to find the organs whatever their contrast. The draws depend on ``seed`` only.
    Samples flagged unlabelled (``m`` False) stay as they are.

    Raises:
        ValueError: ``prob`` outside [0, 1], ``levels`` < 1, a negative ``max_std`` or ``max_blur``.
    """

    def __init__(self, prob: float, levels: int = 8, max_std: float = 0.08, max_blur: Sequence[float] = (1.0, 1.0, 1.0)) -> None:
        if not 0 <= prob <= 1 or levels < 1 or max_std < 0 or any(b < 0 for b in max_blur):
            raise ValueError(f"label synthesis: prob {prob} must lie in [0, 1], levels {levels} >= 1, max_std {max_std} "
                             f"and max_blur {tuple(max_blur)} >= 0")
        self.prob, self.levels, self.max_std, self.max_blur = float(prob), int(levels), float(max_std), tuple(float(b) for b in max_blur)
        self.edges = torch.linspace(-1.0, 1.0, self.levels + 1)[1:-1]

    @property
    def active(self) -> bool:
        return self.prob > 0

    def generation_labels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x (1, D, H, W)`` and ``y (1, D, H, W)`` -> generation labels ``(1, D, H, W)`` int64:
        intensity bins ``0 .. levels - 1`` off the classes, ``levels + c - 1`` on class ``c > 0``."""
        bins = torch.bucketize(x.float().contiguous(), self.edges)
        return torch.where(y > 0, self.levels + y.long() - 1, bins)

    def sample(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
        """One synthetic image ``(1, D, H, W)`` in [-1, 1] from ``x`` and ``y`` of one sample (see the class)."""
        rng = np.random.default_rng(seed)
        gen = self.generation_labels(x, y)
        n = int(gen.max()) + 1
        mean = torch.from_numpy(rng.uniform(0.0, 1.0, n)).float()
        std = torch.from_numpy(rng.uniform(0.0, self.max_std, n)).float()
        noise = torch.randn(gen.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31 - 1))))
        img = mean[gen] + std[gen] * noise
        sigma = [float(rng.uniform(0.0, b)) for b in self.max_blur]
        if any(s > 0 for s in sigma):
            img = _plain(GaussianSmooth(sigma=sigma)(img)).float()
        lo, hi = torch.quantile(img.flatten()[:: max(1, img.numel() // 100_000)], torch.tensor([0.005, 0.995]))
        return ((img - lo) / (hi - lo).clamp_min(1e-6) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, seed: int) -> torch.Tensor:
        """``x (B, 1, D, H, W)``, its labels ``y`` and labelled flags ``m (B,)`` -> ``x`` with each
        labelled sample replaced with probability ``prob`` (no gradient flows through a replaced one)."""
        if not self.active:
            return x
        rng = np.random.default_rng(seed)
        out, changed = [], False
        for xi, yi, mi in zip(x, y, m):
            draw, s = rng.random(), int(rng.integers(2**31 - 1))
            if bool(mi) and draw < self.prob and bool((yi > 0).any()):
                out.append(self.sample(xi.detach().float().cpu(), yi.detach().cpu(), s).to(x.device, x.dtype))
                changed = True
            else:
                out.append(xi)
        return torch.stack(out) if changed else x


class SegmentationTTA:
    """Views of a volume ``x (B, 1, D, H, W)`` in [-1, 1] for test-time augmentation (TTA) of a
    segmenter, drawn from its training augmentation: the first view is ``x`` itself; each other
    one rotates (``rotate_deg`` about each axis) and scales (``1 +- scale`` per axis) the whole
    volume about its centre with MONAI ``RandAffine`` (always, when either range is set: a view
    is only worth its cost if it differs) and perturbs its contrast with ``intensity`` (each
    perturbation with its training probability). Test-time augmentation in this sense (an average of
    predictions over transformed inputs, mapped back): Wang et al., "Aleatoric uncertainty estimation
    with test-time augmentation for medical image segmentation", Neurocomputing 338, 2019.

    Each view comes with ``back``: ``probabilities (B, C, D', H', W')`` on the view's grid ->
    ``(probabilities, weight)`` on ``x``'s grid, both resampled trilinearly by the inverse of the
    same affine (``RandAffine.inverse``) with zero outside the view: ``weight (B, 1, D, H, W)`` is
    1 where the view saw the volume, 0 where the rotation moved that part out of view, and in
    between at the view's edge, and ``probabilities`` carry the same factor. The average over
    the views is therefore ``sum(probabilities) / sum(weight)``
    (:func:`medgan.inference.tta_probabilities`); the first view has weight 1 everywhere. The
    draws depend on ``seed`` and the view's index only, so a scoring is reproducible.

    Raises:
        ValueError: ``passes`` < 1, a negative range, or more than one view with no augmentation
            to draw them from.
    """

    def __init__(self, passes: int, rotate_deg: float = 0.0, scale: float = 0.0, intensity: IntensityAugment | None = None,
                 seed: int = 0) -> None:
        if passes < 1 or rotate_deg < 0 or scale < 0:
            raise ValueError(f"test-time augmentation: passes {passes} must be >= 1, rotate_deg {rotate_deg} and scale {scale} >= 0")
        self.spatial = rotate_deg > 0 or scale > 0
        self.intensity = intensity if intensity is not None and intensity.active else None
        if passes > 1 and not self.spatial and self.intensity is None:
            raise ValueError(f"test-time augmentation: {passes} passes asked for, but no spatial or intensity augmentation "
                             "to draw them from (every view would be the volume itself)")
        r = math.radians(rotate_deg)
        self.passes, self.seed = passes, seed
        self.affine = RandAffine(prob=1.0, rotate_range=(r, r, r), scale_range=(scale, scale, scale), mode="bilinear",
                                 padding_mode="zeros", lazy=False) if self.spatial else None

    def views(self, x: torch.Tensor) -> Iterator[tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]]:
        """``(view (B, 1, D', H', W'), back)`` for each pass; see the class."""
        yield x, lambda p: (p, torch.ones_like(p[:, :1]))
        for k in range(1, self.passes):
            rng = np.random.default_rng([self.seed, k])
            v = self.intensity(x, int(rng.integers(2**31 - 1))) if self.intensity is not None else x
            if self.affine is None:
                yield v, lambda p: (p, torch.ones_like(p[:, :1]))
                continue
            self.affine.set_random_state(seed=int(rng.integers(2**31 - 1)))
            self.affine.randomize()
            # one draw for the whole batch; shifted to [0, 2] so that the zero padding is air
            warped = [self.affine(MetaTensor(s.float().cpu() + 1.0), randomize=False) for s in v]
            ops = [w.applied_operations for w in warped]
            view = torch.stack([_plain(w) for w in warped]).to(x.device, x.dtype) - 1.0

            def back(p: torch.Tensor, ops: list = ops) -> tuple[torch.Tensor, torch.Tensor]:
                probs, weight = [], []
                for pk, op in zip(p.detach().float().cpu(), ops):
                    probs.append(_plain(self.affine.inverse(MetaTensor(pk, applied_operations=[dict(o) for o in op]))))
                    weight.append(_plain(self.affine.inverse(MetaTensor(torch.ones_like(pk[:1]), applied_operations=[dict(o) for o in op]))))
                return torch.stack(probs).to(p.device), torch.stack(weight).to(p.device)

            yield view, back


def _plain(x) -> torch.Tensor:  # noqa: ANN001 - MONAI returns MetaTensors
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


__all__ = ["SPATIAL_MARGIN", "IntensityAugment", "LabelSynthesis", "SegmentationTTA", "SpatialAugment"]
