"""Body masks of CT and MR."""

import numpy as np

from medgan.data.masks import body_mask, mr_body_mask


def _ellipsoid(shape, radii, centre=None):
    c = np.array(centre if centre is not None else [s / 2 for s in shape])
    g = np.indices(shape).astype(float)
    return sum(((g[i] - c[i]) / radii[i]) ** 2 for i in range(3)) <= 1


def test_mr_body_mask_keeps_the_body_with_its_dark_lungs_and_drops_the_noise():
    rng = np.random.default_rng(0)
    shape = (48, 40, 30)
    body = _ellipsoid(shape, (20, 16, 40))  # runs through the top and bottom slices
    lung = _ellipsoid(shape, (6, 5, 8), centre=(24, 20, 29))  # dark, open at the top slice
    mr = rng.rayleigh(20, shape)  # background noise
    mr[body] = rng.normal(400, 60, body.sum())
    mr[lung & body] = rng.rayleigh(20, (lung & body).sum())
    mask = mr_body_mask(mr.astype(np.float32))
    assert mask[body].mean() > 0.99
    assert mask[~body].mean() < 0.01
    assert not mr_body_mask(np.full(shape, 7.0)).any()


def test_ct_body_mask_fills_the_airways():
    ct = np.full((30, 30, 10), -1000.0)
    ct[5:25, 5:25] = 40.0
    ct[12:18, 12:18] = -950.0  # a tube of air through every slice
    assert body_mask(ct)[5:25, 5:25].all() and not body_mask(ct)[:5].any()
