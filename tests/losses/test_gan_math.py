"""The adversarial objectives and divergences checked against their mathematics."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from medgan.losses import GAN_MODES, AdversarialLoss, build_adversarial_loss, gradient_penalty, kl_normal, mmd2, r1_penalty


def test_minimax_value_at_optimal_discriminator_is_2jsd_minus_log4():
    """Goodfellow et al. 2014, Theorem 1: V(D*, G) = 2 JSD(p || q) - log 4 with D* = p / (p + q)."""
    p, q = norm(0.0, 1.0), norm(1.0, 1.5)
    n = 200_000
    u = (np.arange(n) + 0.5) / n
    xp, xq = p.ppf(u), q.ppf(u)  # quantile grids: means over them integrate E_p and E_q

    def logit_dstar(x):  # log D* - log(1 - D*) = log p - log q
        return torch.as_tensor(p.logpdf(x) - q.logpdf(x))

    loss = AdversarialLoss("minimax")
    value = -(loss(logit_dstar(xp), True) + loss(logit_dstar(xq), False)).item()  # V = E_p log D* + E_q log(1-D*)
    grid = np.linspace(-15, 16, 400_001)
    pp, qq = p.pdf(grid), q.pdf(grid)
    m = (pp + qq) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.nan_to_num(pp * np.log(pp / m))
        kl_qm = np.nan_to_num(qq * np.log(qq / m))
    jsd = 0.5 * np.trapezoid(kl_pm, grid) + 0.5 * np.trapezoid(kl_qm, grid)
    assert value == pytest.approx(2 * jsd - math.log(4), abs=1e-3)
    assert value > -math.log(4)  # distinct distributions: above the global minimum


def test_wgan_gp_critic_estimates_w1():
    """A WGAN-GP critic trained on N(0,1) vs N(theta,1) estimates W1 = |theta| (within 10 %)."""
    torch.manual_seed(0)
    theta = 2.0
    critic = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                                 torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    loss = build_adversarial_loss("wgan-gp")
    for _ in range(600):
        real, fake = torch.randn(256, 1), torch.randn(256, 1) + theta
        d = loss(critic(real), True) + loss(critic(fake), False) + 10 * gradient_penalty(critic, real, fake)
        opt.zero_grad()
        d.backward()
        opt.step()
    with torch.no_grad():
        w1 = critic(torch.randn(20_000, 1)).mean() - critic(torch.randn(20_000, 1) + theta).mean()
    assert w1.item() == pytest.approx(theta, rel=0.1)


def test_gradient_penalty_zero_for_unit_norm_linear_critic_and_grows():
    x, y = torch.randn(64, 5), torch.randn(64, 5)
    for scale, expected in ((1.0, 0.0), (3.0, 4.0), (5.0, 16.0)):
        lin = torch.nn.Linear(5, 1)
        with torch.no_grad():
            w = torch.randn(1, 5)
            lin.weight.copy_(scale * w / w.norm())
        assert gradient_penalty(lin, x, y).item() == pytest.approx(expected, abs=1e-4)
    lin.weight.data.fill_(0.0)
    assert r1_penalty(lin, x).item() == 0.0


def test_r1_penalty_is_squared_gradient_norm():
    lin = torch.nn.Linear(4, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 2.0, 0.0]]))
    assert r1_penalty(lin, torch.randn(8, 4)).item() == pytest.approx(9.0)


@pytest.mark.parametrize("mode", GAN_MODES)
def test_signs_and_finiteness_under_bf16_autocast(mode):
    """Confident-correct logits give a lower discriminator loss than confused ones, everywhere
    finite under bfloat16 autocast on CPU; the generator loss falls as fakes look real."""
    loss = AdversarialLoss(mode)
    good, bad = torch.full((4, 1, 3, 3, 3), 3.0), torch.full((4, 1, 3, 3, 3), -3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gb, bb = good.to(torch.bfloat16), bad.to(torch.bfloat16)
        d_right = loss(gb, True) + loss(bb, False)
        d_wrong = loss(bb, True) + loss(gb, False)
        g_fooled = loss(gb, True, for_discriminator=False)
        g_caught = loss(bb, True, for_discriminator=False)
    for v in (d_right, d_wrong, g_fooled, g_caught):
        assert v.dtype == torch.float32 and torch.isfinite(v)
    assert d_right < d_wrong and g_fooled < g_caught


def test_penalties_and_divergences_finite_under_autocast():
    lin = torch.nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.randn(16, 3) + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vals = [gradient_penalty(lin, x, y), r1_penalty(lin, x), mmd2(x, y), kl_normal(x, y).mean()]
    assert all(torch.isfinite(v) for v in vals)
    assert mmd2(x, y) > 0 and kl_normal(x, y).min() >= 0


def test_one_sided_label_smoothing():
    smooth = AdversarialLoss("nonsaturating", real_label=0.9)
    x = torch.tensor([[2.0]])
    expected = 0.9 * torch.nn.functional.softplus(-x) + 0.1 * torch.nn.functional.softplus(x)
    assert smooth(x, True).item() == pytest.approx(expected.item())
    assert smooth(x, False).item() == pytest.approx(AdversarialLoss("nonsaturating")(x, False).item())  # fakes unchanged
    assert smooth(x, True, for_discriminator=False).item() == pytest.approx(torch.nn.functional.softplus(-x).item())
    with pytest.raises(ValueError, match="does not apply"):
        AdversarialLoss("hinge", real_label=0.9)


def test_kl_normal_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.2, -0.7, 0.4]])
    pm, plv = torch.tensor([[0.1, 0.3, 1.0]]), torch.tensor([[-0.3, 0.5, 0.0]])
    z = mu + torch.randn(400_000, 3) * (0.5 * logvar).exp()
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    for prior in (torch.distributions.Normal(torch.zeros(1, 3), torch.ones(1, 3)), torch.distributions.Normal(pm, (0.5 * plv).exp())):
        mc = (q.log_prob(z) - prior.log_prob(z)).sum(1).mean()
        analytic = kl_normal(mu, logvar) if prior.loc.abs().sum() == 0 else kl_normal(mu, logvar, pm, plv)
        assert analytic.item() == pytest.approx(mc.item(), rel=0.02)


def test_mmd_zero_for_same_distribution_and_grows_with_shift():
    torch.manual_seed(0)
    x = torch.randn(400, 2)
    same = mmd2(x, torch.randn(400, 2), bandwidths=[1.0])
    shifts = [mmd2(x, torch.randn(400, 2) + s, bandwidths=[1.0]).item() for s in (0.5, 1.0, 2.0)]
    assert abs(same.item()) < 0.01
    assert shifts[0] > 0.02 and shifts[0] < shifts[1] < shifts[2]
