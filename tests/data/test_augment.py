"""Training augmentation: deterministic per seed, labels stay labels, air stays air."""

import numpy as np
import pytest
import torch
from monai.transforms import FgBgToIndicesd

from medgan.data.augment import IntensityAugment, LabelSynthesis, SegmentationTTA, SpatialAugment
from medgan.data.transforms import PatchDataset
from medgan.keys import UNLABELLED, Keys


def _volume() -> dict:
    img = torch.full((1, 60, 60, 40), -1.0)
    img[:, 10:50, 10:50, 5:35] = 0.3
    lab = torch.zeros((1, 60, 60, 40), dtype=torch.long)
    lab[:, 20:40, 22:38, 10:30] = 1
    lab[:, 42:46, 20:40, 10:30] = 2
    return FgBgToIndicesd(keys=Keys.LABEL.value)({Keys.IMAGE.value: img, Keys.LABEL.value: lab, Keys.HAS_LABEL.value: True})


def test_spatial_augmentation_moves_image_and_label_together_deterministically():
    vol = _volume()
    aug = PatchDataset([vol], (32, 32, 24), seed=0, length=8, spatial=SpatialAugment((32, 32, 24), 20, 0.15, 1.0))
    plain = PatchDataset([vol], (32, 32, 24), seed=0, length=8)
    a, b = aug[3], aug[3]
    assert a[Keys.IMAGE.value].shape == (1, 32, 32, 24) and torch.equal(a[Keys.IMAGE.value], b[Keys.IMAGE.value])
    assert set(a[Keys.LABEL.value].unique().tolist()) <= {0, 1, 2} and a[Keys.LABEL.value].dtype == torch.int64
    assert float(a[Keys.IMAGE.value].min()) >= -1.0 - 1e-6  # padding is air (-1), not grey (0)
    # labelled voxels lie on the organ's intensity (0.3): the label moved with the image
    img, lab = a[Keys.IMAGE.value], a[Keys.LABEL.value]
    assert float((img[lab == 1] - 0.3).abs().median()) < 1e-3
    differs = [not torch.equal(aug[i][Keys.IMAGE.value], plain[i][Keys.IMAGE.value]) for i in range(8)]
    assert all(differs)


def test_spatial_augmentation_off_is_the_centre_crop_of_the_larger_crop():
    vol = _volume()
    aug = PatchDataset([vol], (32, 32, 24), seed=1, length=4, spatial=SpatialAugment((32, 32, 24), 20, 0.1, 0.0))
    item = aug[0]
    assert item[Keys.IMAGE.value].shape == (1, 32, 32, 24)
    vals = np.unique(item[Keys.IMAGE.value].numpy())
    assert np.all(np.isclose(vals, -1.0, atol=1e-6) | np.isclose(vals, 0.3, atol=1e-6)), vals  # only the volume's own values


def _labelled_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two samples: air, a soft-tissue body and two organs of the same intensity (x cannot tell them apart)."""
    x = torch.full((2, 1, 24, 24, 16), -1.0)
    x[:, :, 2:22, 2:22, 1:15] = 0.1
    y = torch.zeros((2, 1, 24, 24, 16), dtype=torch.long)
    y[:, :, 4:10, 4:20, 3:13] = 1
    y[:, :, 14:20, 4:20, 3:13] = 2
    y[:, :, 0, 0, 0] = UNLABELLED
    return x, y


def test_label_synthesis_draws_one_intensity_per_tissue_from_the_labels():
    x, y = _labelled_batch()
    synth = LabelSynthesis(prob=1.0, max_std=0.0, max_blur=(0.0, 0.0, 0.0))
    out = synth(x, y, torch.tensor([True, True]), seed=0)
    assert out.shape == x.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    for k in range(2):
        o = out[k, 0]
        # generation labels: organ 1, organ 2, the body's intensity bin, the air's bin (UNLABELLED voxels by intensity)
        regions = [y[k, 0] == 1, y[k, 0] == 2, (y[k, 0] == 0) & (x[k, 0] > -0.5), x[k, 0] == -1.0]
        values = [o[r].unique() for r in regions]
        assert all(v.numel() == 1 for v in values), values  # no noise, no blur: each tissue one value
        assert len({round(float(v), 5) for v in values}) == 4  # organs apart from each other and from the body
    assert not torch.equal(out[0], out[1])  # each sample its own contrast
    assert torch.equal(out, synth(x, y, torch.tensor([True, True]), seed=0))
    assert not torch.equal(out, synth(x, y, torch.tensor([True, True]), seed=1))


def test_label_synthesis_leaves_unlabelled_samples_and_prob_zero_alone():
    x, y = _labelled_batch()
    out = LabelSynthesis(prob=1.0)(x, y, torch.tensor([False, True]), seed=2)
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1], x[1])
    assert torch.equal(LabelSynthesis(prob=0.0)(x, y, torch.tensor([True, True]), seed=2), x)
    with pytest.raises(ValueError, match="label synthesis"):
        LabelSynthesis(prob=1.5)


def test_intensity_augmentation_is_seeded_clipped_and_keeps_air():
    x = torch.full((2, 1, 24, 24, 16), -1.0)
    x[:, :, 4:20, 4:20, 2:14] = torch.linspace(-0.5, 0.8, 12)
    aug = IntensityAugment(bias_field=1.0, histogram_shift=1.0, contrast=1.0)
    y = aug(x, seed=3)
    assert torch.equal(y, aug(x, seed=3)) and not torch.equal(y, aug(x, seed=4))
    assert float(y.min()) >= -1 and float(y.max()) <= 1 and not torch.allclose(y, x)
    assert torch.all(y[x == -1.0] == -1.0)  # air stays the darkest value
    assert torch.equal(IntensityAugment()(x, seed=0), x)
    with pytest.raises(ValueError, match="gibbs"):
        IntensityAugment(gibbs=1.5)
    gibbs = IntensityAugment(gibbs=1.0)(x, seed=1)
    assert gibbs.shape == x.shape and not torch.equal(gibbs, x)


def test_spatial_augmentation_scales_each_axis_by_its_own_factor():
    """MONAI's RandAffined draws one scale factor per axis: a cube's extents change unequally."""
    img = torch.full((1, 48, 48, 48), -1.0)
    img[:, 14:34, 14:34, 14:34] = 0.3
    lab = (img > 0).long()
    aug = SpatialAugment((36, 36, 36), rotate_deg=0.0, scale=0.3, prob=1.0)
    crop = {Keys.IMAGE.value: img[:, 1:48, 1:48, 1:48], Keys.LABEL.value: lab[:, 1:48, 1:48, 1:48]}
    extents = []
    for seed in range(4):
        out = aug(crop, seed)[Keys.LABEL.value][0]
        extents.append([int(out.any(dim=tuple(d for d in range(3) if d != axis)).sum()) for axis in range(3)])
    assert all(20 / 1.3 - 1 <= v <= 20 / 0.7 + 1 for e in extents for v in e), extents  # within 1 +- scale
    assert any(max(e) - min(e) >= 2 for e in extents), extents  # not one isotropic factor (rounding: 1 voxel)


def _blob(shape=(48, 40, 32)) -> torch.Tensor:
    x = torch.full((1, 1, *shape), -1.0)
    x[:, :, 6:22, 8:20, 4:14] = 0.5  # off-centre: a rotation about the centre moves it
    x[:, :, 28:42, 22:34, 16:28] = 0.0
    return x


def _pointwise(v: torch.Tensor) -> torch.Tensor:
    """Probabilities of 3 classes from the intensity alone: any displacement of the mapping back shows."""
    return torch.cat([(v < -0.5), (v >= -0.5) & (v < 0.25), (v >= 0.25)], 1).float()


def test_test_time_views_map_back_onto_the_volume():
    from medgan.inference import tta_probabilities

    x = _blob()
    tta = SegmentationTTA(6, rotate_deg=20, scale=0.15, seed=3)
    views = list(tta.views(x))
    assert len(views) == 6 and views[0][0] is x
    assert all(not torch.allclose(v, x) for v, _ in views[1:])  # each view differs from the volume
    for v, back in views[1:]:
        p, w = back(_pointwise(v))
        assert p.shape == (1, 3, *x.shape[2:]) and w.shape == (1, 1, *x.shape[2:])
        assert float(w.min()) >= 0 and float(w.max()) <= 1 + 1e-5
        inside = w[0, 0] > 0.99
        agree = (p.argmax(1)[0] == _pointwise(x).argmax(1)[0])[inside].float().mean()
        assert agree > 0.97, f"a view mapped back disagrees with the volume on {1 - float(agree):.1%} of its voxels"
    avg = tta_probabilities(_pointwise, x, tta)
    assert torch.allclose(avg.sum(1), torch.ones(()), atol=1e-4)
    truth = _pointwise(x).argmax(1)
    for c in (1, 2):
        a, b = avg.argmax(1) == c, truth == c
        assert 2 * float((a & b).sum()) / float(a.sum() + b.sum()) > 0.95
    # reproducible: the same seed draws the same views, another seed others
    assert torch.equal(avg, tta_probabilities(_pointwise, x, SegmentationTTA(6, rotate_deg=20, scale=0.15, seed=3)))
    assert not torch.equal(list(SegmentationTTA(2, 20, 0.15, seed=4).views(x))[1][0], views[1][0])


def test_test_time_augmentation_draws_from_the_domain_training_augmentation():
    from medgan.pipelines.data_config import AugmentConfig, SegmentationTTAConfig

    assert SegmentationTTAConfig().augment(AugmentConfig(rotate_deg=15), "MR") is None  # passes 1: off
    tta = SegmentationTTAConfig(passes=4, intensity=False).augment(AugmentConfig(rotate_deg=15, scale=0.1, contrast=0.5), "MR")
    assert tta.passes == 4 and tta.spatial and tta.intensity is None
    tta = SegmentationTTAConfig(passes=4, spatial=False, intensity=True).augment(AugmentConfig(rotate_deg=15, contrast=0.5), "MR")
    assert not tta.spatial and tta.intensity is not None
    with pytest.raises(ValueError, match="MR trained without the augmentation"):
        SegmentationTTAConfig(passes=4).augment(AugmentConfig(contrast=0.5), "MR")  # spatial views by default: none to draw
    with pytest.raises(ValueError, match="no spatial or intensity augmentation"):
        SegmentationTTA(3)
