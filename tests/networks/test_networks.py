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
    net = gen()
    y = net(x)
    assert y.shape == x.shape
    assert (net(x.flip(2)) - y.flip(2)).abs().max() > 1e-4  # it looks at its input (no constant output)


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


def _plain_generator(g: ResnetGenerator) -> ResnetGenerator:
    """A copy computing every layer the textbook way: nn.Upsample + nn.Conv3d, plain output conv."""
    import copy

    from torch import nn

    from medgan.networks.layers import FewOutputConv3d, InstanceNorm3dCPU, UpsampleConv3d

    ref = copy.deepcopy(g)
    for i, layer in enumerate(ref.model):
        if isinstance(layer, nn.Identity):
            ref.model[i] = nn.Upsample(scale_factor=2, mode="nearest")
    for m in ref.modules():
        if isinstance(m, (FewOutputConv3d, UpsampleConv3d)):
            m.__class__ = nn.Conv3d
        elif isinstance(m, InstanceNorm3dCPU):
            m.__class__ = nn.InstanceNorm3d
    return ref


def test_cpu_fast_paths_give_the_textbook_generator():
    """The few-output-channel output convolution, the sub-pixel upsampling convolution, the CPU
    instance norm and the channels-last residual blocks compute the same function, with the same
    parameters, as upsample + conv, a plain Conv3d and nn.InstanceNorm3d: in inference and in
    training (values and gradients)."""
    torch.manual_seed(0)
    g = ResnetGenerator(3, 1, 1, ngf=8, n_res_blocks=2)
    ref = _plain_generator(g)
    assert g.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(2, 1, 20, 18, 13)
    with torch.inference_mode():  # CPU forms, channels-last residual blocks
        y_inference = g(x)
        torch.testing.assert_close(y_inference, ref(x), atol=2e-5, rtol=1e-4)
    y, y_ref = g(x), ref(x)  # with gradients: torch's own norm, contiguous layout
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(y_inference, y.detach(), atol=2e-5, rtol=1e-4)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    (y_ref * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    for (name, p), p_ref in zip(g.named_parameters(), ref.parameters()):
        scale = p_ref.grad.abs().max().item()  # gradients reach hundreds: compare relative to them
        assert (p.grad - p_ref.grad).abs().max().item() <= 1e-4 * scale + 1e-4, name  # float32 sums


@pytest.mark.parametrize("padding_mode, cout, kernel", [("reflect", 1, 7), ("zeros", 3, 7), ("replicate", 1, 5), ("reflect", 2, 3)])
@pytest.mark.parametrize("lanes", [8, 16])  # AVX2 and AVX-512 blocking: 1, 2 or 3 width pieces
@pytest.mark.parametrize("grad", [True, False])  # depth taps with gradients, depthwise without
def test_few_output_conv_equals_conv3d(padding_mode, cout, kernel, lanes, grad, monkeypatch):
    from torch import nn

    import medgan.networks.layers as layers
    from medgan.networks.layers import FewOutputConv3d

    monkeypatch.setattr(layers, "_cpu_vector_channels", lambda: lanes)
    torch.manual_seed(1)
    conv = FewOutputConv3d(5, cout, kernel, padding=kernel // 2, padding_mode=padding_mode)
    ref = nn.Conv3d(5, cout, kernel, padding=kernel // 2, padding_mode=padding_mode)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 5, 9, 11, 8)
    with torch.set_grad_enabled(grad):
        y = conv(x)
    assert y.requires_grad == grad
    torch.testing.assert_close(y, ref(x), atol=1e-4, rtol=1e-4)


def test_upsample_conv_equals_upsample_then_conv():
    import torch.nn.functional as F

    from medgan.networks.layers import UpsampleConv3d

    torch.manual_seed(2)
    conv = UpsampleConv3d(6, 4, 3, padding=1, padding_mode="reflect", bias=True)
    x = torch.randn(2, 6, 5, 7, 3)
    ref = F.conv3d(F.pad(F.interpolate(x, scale_factor=2, mode="nearest"), (1,) * 6, mode="reflect"), conv.weight, conv.bias)
    y = conv(x)
    assert y.shape == (2, 4, 10, 14, 6)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_cpu_instance_norm_equals_torch(affine, memory_format):
    """Same values as nn.InstanceNorm3d in float64 without gradients, also for channels far from
    zero mean (a one-pass E[x^2] - E[x]^2 would lose digits there; torch's float32 kernel is off
    by 1e-3 on the second channel), in either memory format; with gradients it is torch's own."""
    import copy

    from torch import nn

    from medgan.networks.layers import InstanceNorm3dCPU

    torch.manual_seed(3)
    norm = InstanceNorm3dCPU(5, affine=affine)
    ref = nn.InstanceNorm3d(5, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
        ref.load_state_dict(norm.state_dict())
    assert norm.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(3, 5, 9, 10, 11) * torch.tensor([1.0, 0.01, 5.0, 1.0, 2.0]).view(1, 5, 1, 1, 1) + torch.tensor(
        [0.0, 300.0, -20.0, 1.0, 1000.0]).view(1, 5, 1, 1, 1)
    x = x.contiguous(memory_format=memory_format)
    with torch.no_grad():
        y = norm(x)
    assert y.is_contiguous(memory_format=memory_format)
    with torch.no_grad():
        exact = copy.deepcopy(ref).double()(x.double()).float()
    torch.testing.assert_close(y, exact, atol=2e-6, rtol=1e-6)
    assert not torch.equal(y, x)
    x.requires_grad_(True)
    torch.testing.assert_close(norm(x), ref(x))
