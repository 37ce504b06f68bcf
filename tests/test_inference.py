"""Sliding-window inference: float32 unless bfloat16 is asked for."""

import pytest
import torch

from medgan.inference import sliding_window
from medgan.networks import ResnetGenerator


def test_inference_is_float32_unless_bfloat16_is_asked_for():
    torch.manual_seed(0)
    net = ResnetGenerator(spatial_dims=3, ngf=4, n_res_blocks=1).eval()
    x = torch.rand(1, 1, 16, 16, 8) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    # one window covering the volume, constant blend: exactly the network's float32 output
    y32 = sliding_window(net, x, (16, 16, 8), overlap=0, sw_batch_size=1, blend="constant", device="cpu")
    torch.testing.assert_close(y32, ref, rtol=0, atol=1e-6)
    y16 = sliding_window(net, x, (16, 16, 8), overlap=0, sw_batch_size=1, blend="constant", device="cpu",
                         precision="bfloat16")
    assert (y16 - ref).abs().max() > 1e-4  # autocast really ran in bfloat16
    with pytest.raises(ValueError, match="precision"):
        sliding_window(net, x, (16, 16, 8), device="cpu", precision="float16")
