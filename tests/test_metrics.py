import numpy as np
import pytest

from medgan.metrics import body_mask, dice_per_class, intensity_stats_per_class, paired_metrics


def _ct(shape=(40, 40, 20)):
    ct = np.full(shape, -1000.0, np.float32)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = (i - 20) ** 2 + (j - 20) ** 2 < 15**2
    ct[body] = 40.0
    ct[18:22, 18:22] = -900  # an air pocket inside the body, filled by the mask
    return ct, body


def test_paired_metrics_identity_and_offset():
    ct, body = _ct()
    same = paired_metrics(ct, ct)
    assert same["mae_hu"] == 0 and same["ssim"] == pytest.approx(1.0) and np.isinf(same["psnr_db"])
    shifted = paired_metrics(ct + 50, ct)
    assert shifted["mae_hu"] == pytest.approx(50, abs=1e-3)
    assert shifted["body_voxels"] == int(body.sum()) * ct.shape[2]
    assert 0 < shifted["ssim"] < 1


def test_paired_metrics_clip_to_synthrad_range():
    ct, _ = _ct()
    hot = ct.copy()
    hot[0, 0, 0] = 10_000  # outside the body, above 3071 HU: clipped for PSNR/SSIM
    assert paired_metrics(hot, ct)["psnr_db"] == pytest.approx(20 * np.log10(4095 / np.sqrt((3071 + 1000) ** 2 / ct.size)), rel=1e-3)


def test_body_mask_fills_holes():
    ct, body = _ct()
    assert body_mask(ct)[:, :, 0].sum() == body.sum()


def test_dice_per_class():
    a = np.zeros((10, 10, 10), int)
    b = np.zeros((10, 10, 10), int)
    a[:5] = 1
    b[:5] = 1
    b[5:6] = 2
    d = dice_per_class(a, b, ["x", "y", "z"])
    assert d["x"] == pytest.approx(1.0) and d["y"] == 0.0 and np.isnan(d["z"])


def test_intensity_stats():
    img = np.arange(8, dtype=float).reshape(2, 2, 2)
    lab = np.zeros((2, 2, 2), int)
    lab[0] = 1
    s = intensity_stats_per_class(img, lab, ["a", "b"])
    assert s["a"]["mean"] == pytest.approx(1.5) and "b" not in s
