import numpy as np
import pytest
import torch

from medgan.data.intensity import IntensityScaling, fit_scaling, mean_scaling


def test_window_inverts_within_one_hu():
    hu = np.random.default_rng(0).uniform(-1024, 2000, size=10_000).astype(np.float32)
    s = fit_scaling(hu, "window", window=(-1024, 2000))
    y = s.forward(hu)
    np.testing.assert_allclose(s.forward(np.array([-1024.0, 488.0, 2000.0])), [-1, 0, 1], atol=1e-6)  # linear, onto [-1, 1]
    assert np.abs(s.inverse(y) - hu).max() < 1.0
    # float32 tensors too (what the networks produce)
    t = torch.as_tensor(y)
    assert (s.inverse(t).numpy() - hu).__abs__().max() < 1.0


def test_window_clips_outside_and_says_so_in_range():
    s = IntensityScaling(-1024, 2000)
    assert float(s.forward(np.array(3000.0))) == 1.0
    assert float(s.inverse(np.array(1.0))) == 2000.0


def test_percentile_scaling_is_robust_and_invertible():
    rng = np.random.default_rng(1)
    mr = rng.gamma(2.0, 100.0, size=50_000).astype(np.float32)
    mr[:10] = 3.3e6  # outliers such as a large scl_slope produces
    s = fit_scaling(mr, "percentile", percentiles=(0.5, 99.5))
    assert s.upper < 3.3e6
    inside = mr[(mr >= s.lower) & (mr <= s.upper)]
    np.testing.assert_allclose(s.inverse(s.forward(inside)), inside, rtol=1e-4, atol=1e-2)


def test_mean_scaling_and_errors():
    m = mean_scaling([IntensityScaling(0, 10), IntensityScaling(2, 20)])
    assert (m.lower, m.upper) == (1, 15)
    with pytest.raises(ValueError):
        IntensityScaling(5, 5)
    with pytest.raises(ValueError):
        mean_scaling([])


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int8, np.uint16])
def test_integer_percentiles_are_numpys_exactly(dtype):
    from medgan.data.intensity import percentiles_of

    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    for n in (1, 2, 7, 1001):
        a = rng.integers(info.min, int(info.max) + 1, size=n).astype(dtype)
        for q in ((0.5, 99.5), (0, 100), (50,), (33.3, 12.5)):
            np.testing.assert_allclose(percentiles_of(a, q), np.percentile(a, q), rtol=1e-12, atol=1e-9)
    vol = np.asfortranarray(rng.gamma(2, 100, size=(30, 20, 10)).astype(dtype))  # as nibabel hands it out
    np.testing.assert_allclose(percentiles_of(vol, (0.5, 99.5)), np.percentile(vol, (0.5, 99.5)), rtol=1e-12)
