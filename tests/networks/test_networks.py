"""Every network on odd 3D sizes (and 2D), and generator train/eval consistency."""

import pytest
import torch

from medgan.networks import PatchDiscriminator, ResnetGenerator, UNetGenerator, build_segmenter

ODD = (1, 1, 33, 27, 21)


@pytest.mark.parametrize("gen", [
    lambda: ResnetGenerator(3, 1, 1, ngf=4, n_res_blocks=1),
    lambda: UNetGenerator(3, 1, 1, features=(4, 4, 4, 8, 8, 4)),
])
def test_generators_keep_odd_shapes_and_range(gen):
    x = torch.rand(ODD) * 2 - 1
    y = gen()(x)
    assert y.shape == x.shape
    assert y.abs().max() < 1


def test_resnet_generator_2d():
    assert ResnetGenerator(2, 1, 2, ngf=4, n_res_blocks=1)(torch.rand(2, 1, 31, 17)).shape == (2, 2, 31, 17)


def test_generator_eval_equals_train_mode():
    """Instance norm uses per-input statistics in both modes (no train/test mismatch)."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, 1, 1, ngf=4, n_res_blocks=1)
    x = torch.rand(1, 1, 16, 16, 8)
    g.train()
    for _ in range(3):
        g(torch.rand(1, 1, 16, 16, 8) * 5)  # would move running statistics, were there any
    y_train = g(x)
    g.eval()
    torch.testing.assert_close(g(x), y_train)


def test_patch_discriminator_outputs_patch_logits():
    d = PatchDiscriminator(3, 1, ndf=4, n_layers=2)
    y = d(torch.rand(2, 1, 33, 27, 21))
    assert y.ndim == 5 and y.shape[:2] == (2, 1) and all(s > 1 for s in y.shape[2:])


def test_segmenter_odd_shape():
    s = build_segmenter(3, 1, 5, (4, 4, 4, 8, 8, 4))
    assert s(torch.rand(ODD)).shape == (1, 5, 33, 27, 21)
