import math

import pytest
import torch

from medgan.losses import GAN_MODES, AdversarialLoss, MaskedDiceCELoss


def test_lsgan_is_cyclegans_squared_error():
    """Zhu et al. 2017 sec. 4 and junyanz's GANLoss('lsgan') = nn.MSELoss against 1 or 0, and
    MONAI's PatchAdversarialLoss(least_squares, no_activation_leastsq=True) for the generator."""
    from monai.losses import PatchAdversarialLoss

    loss = AdversarialLoss("lsgan")
    x = torch.randn(2, 1, 5, 4, 3)
    mse = torch.nn.MSELoss()
    torch.testing.assert_close(loss(x, True), mse(x, torch.ones_like(x)))
    torch.testing.assert_close(loss(x, False), mse(x, torch.zeros_like(x)))
    torch.testing.assert_close(loss(x, True, for_discriminator=False), mse(x, torch.ones_like(x)))
    monai = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
    torch.testing.assert_close(loss(x, True, for_discriminator=False), monai(x, target_is_real=True, for_discriminator=False))


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


def test_masked_dice_ce_ignores_unlabelled_voxels_and_equals_monai_without_them():
    from monai.losses import DiceCELoss

    from medgan.keys import UNLABELLED

    crit = MaskedDiceCELoss()
    logits = torch.randn(2, 3, 8, 8, 8)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    both = torch.tensor([True, True])
    torch.testing.assert_close(crit(logits, target, both), DiceCELoss(to_onehot_y=True, softmax=True)(logits, target))
    partial = target.clone()
    partial[..., 5:] = UNLABELLED  # the loss is that of the labelled block alone, whatever the logits elsewhere
    block = crit(logits[..., :5].contiguous(), target[..., :5].contiguous(), both)
    torch.testing.assert_close(crit(logits, partial, both), block)
    noisy = logits.clone()
    noisy[..., 5:] += 10 * torch.randn_like(noisy[..., 5:])
    torch.testing.assert_close(crit(noisy, partial, both), block)
    assert crit(logits, torch.full_like(target, UNLABELLED), both) is None
