"""Issue 17: feature/latent projections (PNG + CSV), domain classifier, truncation and latent
interpolation, Fréchet distance and MMD."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import scipy.linalg
import torch

from medgan.features import domain_accuracy, frechet_distance, mmd, project
from medgan.sampling import latent_noise, lerp, slerp, truncated_normal


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula written out with numpy/scipy (Heusel et al. 2017)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_frechet_distance_is_zero_on_itself_and_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (400, 6))
    b = rng.normal(0.5, 1.5, (300, 6)) @ rng.normal(0, 1, (6, 6))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, b) == pytest.approx(_scipy_fd(a, b), rel=1e-6)
    assert abs(mmd(a, rng.normal(0, 1, (400, 6)))) < 0.05 < mmd(a, a + 2.0)


def test_domain_accuracy_tells_separable_from_aligned_features():
    rng = np.random.default_rng(1)
    same = rng.normal(0, 1, (80, 5))
    domains = ["CT"] * 40 + ["MR"] * 40
    assert domain_accuracy(same, domains) < 0.7
    shifted = same.copy()
    shifted[40:] += 3.0
    assert domain_accuracy(shifted, domains) > 0.95
    with pytest.raises(ValueError, match="two domains"):
        domain_accuracy(same, ["CT"] * 80)


def test_truncation_zero_is_the_mean_and_larger_thresholds_are_more_diverse():
    g = torch.Generator().manual_seed(0)
    assert float(truncated_normal((1000,), 0.0, g).abs().max()) == 0.0
    stds = [float(truncated_normal((20000,), t, torch.Generator().manual_seed(1)).std()) for t in (0.25, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(stds, stds[1:])) and stds[-1] < 1.0
    assert float(truncated_normal((20000,), 0.5, g).abs().max()) <= 0.5
    assert torch.equal(latent_noise((3, 4), seed=7), latent_noise((3, 4), seed=7))  # fixed seed: the figure can be remade
    with pytest.raises(ValueError):
        truncated_normal((2,), -1.0)


def test_slerp_stays_on_the_sphere_and_lerp_does_not():
    g = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(64, generator=g), torch.randn(64, generator=g)
    z1 = z1 / z1.norm() * z0.norm()
    for t in np.linspace(0, 1, 9):
        assert float(slerp(z0, z1, t).norm()) == pytest.approx(float(z0.norm()), rel=1e-5)
    assert float(lerp(z0, z1, 0.5).norm()) < 0.9 * float(z0.norm())
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6) and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-5)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_projections_give_two_coordinates_per_point(method):
    x = np.random.default_rng(0).normal(size=(30, 8))
    xy = project(x, method)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()


def test_cyclegan_views_write_png_and_csv(tmp_path, tiny_checkpoint):
    from medgan.pipelines.inspect import inspect

    rep = inspect(tiny_checkpoint, tmp_path, max_volumes=2)
    for dom in ("CT", "MR"):
        r = rep["domains"][dom]
        assert 0.0 <= r["domain_accuracy"] <= 1.0 and r["frechet_distance"] >= 0
        with open(r["csv"]) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == sum(r["n"].values()) and {"pca_x", "tsne_y", "umap_x"} <= set(rows[0])
        assert open(r["png"], "rb").read(4) == b"\x89PNG"


def test_adda_views_before_and_after(tmp_path):
    from medgan.pipelines.adda.trainer import AddaTrainer
    from medgan.pipelines.inspect import inspect
    from tests.pipelines.test_adda import phantom_config

    ckpt = AddaTrainer(phantom_config(tmp_path / "run"), progress=False).fit()
    rep = inspect(ckpt, tmp_path / "views", levels=(3,), max_volumes=2, methods=("pca",))
    for stage in ("before", "after"):
        assert (tmp_path / f"views/adda_level3_{stage}.png").is_file() and (tmp_path / f"views/adda_level3_{stage}.csv").is_file()
        assert 0.0 <= rep["levels"][3][stage]["domain_accuracy"] <= 1.0


def test_cvae_latents_truncation_and_interpolation(tmp_path):
    from medgan.pipelines.cvae.sample import CVAESampler, interpolate, truncation_curve
    from medgan.pipelines.cvae.trainer import labelled_volumes, train_cvae
    from medgan.pipelines.inspect import inspect
    from tests.pipelines.test_cvae import config

    ckpt = train_cvae(config(tmp_path / "cvae"), progress=False)
    rep = inspect(ckpt, tmp_path / "views", methods=("pca", "umap"))
    assert rep["points"] > 10 and (tmp_path / "views/cvae_latents.csv").is_file()
    s = CVAESampler(ckpt, "cpu")
    vols, _ = labelled_volumes(s.config)
    lab = vols[0]["label"].float()
    shape = s.noise_shape(lab)
    mean_a = s.sample_noise(lab, latent_noise(shape, seed=1, truncation=0.0))
    mean_b = s.sample_noise(lab, latent_noise(shape, seed=2, truncation=0.0))
    assert torch.equal(mean_a, mean_b)  # truncation 0: every seed gives the mean sample
    rows = truncation_curve(s, vols[:1], [0.0, 1.0, None], n=3)
    div = [r["diversity_mean_abs_diff"] for r in rows]
    assert div[0] == pytest.approx(0.0, abs=1e-6) and div[0] < div[1] <= div[2] + 1e-6
    strip = interpolate(s, lab, (1, 2), steps=4)
    assert len(strip) == 4 and torch.equal(strip[0], s.sample_noise(lab, latent_noise(shape, seed=1)))


def test_fid_sanity_check_grows_with_noise(tmp_path, tiny_checkpoint):
    from medgan.pipelines.inspect import fid_cyclegan

    rep = fid_cyclegan(tiny_checkpoint, tmp_path, level=3, max_volumes=2)
    sanity = rep["sets"]["CT"]["sanity (real halves, + noise)"]
    noise = [sanity["noise"][k] for k in sorted(sanity["noise"], key=float)]
    assert noise[-1] > noise[0] and noise[-1] > sanity["halves"]
    assert "organs" in rep["sets"]["MR"]["CT->MR vs real MR"]


def test_gan_truncation_and_interpolation_figures(tmp_path):
    from medgan.networks import DCGANGenerator
    from medgan.pipelines.slices_demo import gan_sampling_figures

    torch.manual_seed(0)
    g = DCGANGenerator(2, latent_dim=16, channels=[16, 8], base=4).eval()
    div = gan_sampling_figures(g, 16, tmp_path, seed=0, n=4)
    assert div["0.0"] == pytest.approx(0.0, abs=1e-6) and div["0.0"] < div["1.0"] < div["none"] + 1e-6
    for name in ("wgan_gp_truncation.png", "wgan_gp_interpolation.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
