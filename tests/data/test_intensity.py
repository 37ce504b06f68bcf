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


KNOTS = ((-200.0, -0.6), (300.0, 0.6))


def test_piecewise_window_is_exactly_invertible_and_stretches_soft_tissue():
    s = IntensityScaling(-1024, 2000, KNOTS)
    hu = np.random.default_rng(5).uniform(-1024, 2000, size=20_000).astype(np.float32)
    np.testing.assert_allclose(s.forward(np.array([-1024.0, -200.0, 50.0, 300.0, 2000.0])), [-1, -0.6, 0.0, 0.6, 1], atol=1e-6)
    assert np.abs(s.inverse(s.forward(hu)) - hu).max() < 0.01
    t = torch.as_tensor(hu)
    np.testing.assert_allclose(s.forward(t).numpy(), s.forward(hu), atol=1e-6)  # torch and numpy agree
    assert (s.inverse(s.forward(t)) - t).abs().max() < 0.01
    # 3.6 times the contrast of the linear window between two soft tissues
    linear = IntensityScaling(-1024, 2000)
    ratio = float(np.diff(s.forward(np.array([30.0, 60.0])))[0] / np.diff(linear.forward(np.array([30.0, 60.0])))[0])
    assert ratio == pytest.approx((1.2 / 500) / (2 / 3024), rel=1e-6)
    assert float(s.forward(np.array(2500.0))) == 1.0 and float(s.forward(np.array(-3000.0))) == -1.0  # clipped as before
    g = torch.tensor([0.1], requires_grad=True)
    s.inverse(g).sum().backward()
    assert float(g.grad[0]) == pytest.approx(500 / 1.2, rel=1e-5)  # differentiable: the local slope


def test_piecewise_scaling_round_trips_through_a_checkpoint_dict_and_refuses_bad_knots():
    s = IntensityScaling(-1024, 2000, KNOTS)
    assert IntensityScaling.from_dict({"kind": "window", **s.to_dict()}) == s
    old = IntensityScaling.from_dict({"kind": "window", "lower": -1024, "upper": 2000})  # a checkpoint before knots
    assert old == IntensityScaling(-1024, 2000) and "knots" not in old.to_dict()
    assert mean_scaling([s, s]).knots == s.knots
    with pytest.raises(ValueError, match="no single slope"):
        _ = s.slope
    for bad in (((300.0, -0.6), (-200.0, 0.6)), ((-200.0, 0.6), (300.0, -0.6)), ((-2000.0, -0.5),), ((0.0, 1.5),)):
        with pytest.raises(ValueError, match="knots"):
            IntensityScaling(-1024, 2000, bad)
    with pytest.raises(ValueError, match="percentile"):
        fit_scaling(np.zeros(3), "percentile", knots=KNOTS)
