import math

import pytest
import torch

from medgan.losses import GAN_MODES, AdversarialLoss, MaskedDiceCELoss


def test_lsgan_values():
    loss = AdversarialLoss("lsgan")
    x = torch.full((2, 1, 3, 3, 3), 0.5)
    assert loss(x, True).item() == pytest.approx(0.5 * 0.25)
    assert loss(x, False).item() == pytest.approx(0.5 * 0.25)
    assert loss(torch.ones(2, 1), True).item() == 0


def test_minimax_and_nonsaturating_match_log_sigmoid():
    x = torch.tensor([[0.3], [-1.2]])
    s = torch.sigmoid(x)
    d_real = AdversarialLoss("minimax")(x, True)
    assert d_real.item() == pytest.approx(-torch.log(s).mean().item(), rel=1e-5)
    g_mm = AdversarialLoss("minimax")(x, True, for_discriminator=False)
    assert g_mm.item() == pytest.approx(torch.log(1 - s).mean().item(), rel=1e-5)
    g_ns = AdversarialLoss("nonsaturating")(x, True, for_discriminator=False)
    assert g_ns.item() == pytest.approx(-torch.log(s).mean().item(), rel=1e-5)


@pytest.mark.parametrize("mode", GAN_MODES)
def test_finite_under_bf16_autocast(mode):
    loss = AdversarialLoss(mode)
    x = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = (x * 3).to(torch.bfloat16)
        total = loss(y, True) + loss(y, False)
    assert math.isfinite(total.item())
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_mode_suggests():
    with pytest.raises(ValueError, match="did you mean 'lsgan'"):
        AdversarialLoss("lsgn")


def test_masked_dice_ce_uses_only_labelled_members():
    crit = MaskedDiceCELoss()
    logits = torch.randn(2, 3, 8, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    assert crit(logits, target, torch.tensor([False, False])) is None
    only_first = crit(logits, target, torch.tensor([True, False]))
    torch.testing.assert_close(only_first, crit(logits[:1], target[:1], torch.tensor([True])))
