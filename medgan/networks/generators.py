"""Image-to-image generators for any ``spatial_dims`` (1, 2 or 3).

``ResnetGenerator`` is the CycleGAN generator of Zhu et al., "Unpaired Image-to-Image Translation
using Cycle-Consistent Adversarial Networks", ICCV 2017 (after Johnson et al. 2016): c7s1-ngf,
two stride-2 downsamplings, ``n_res_blocks`` residual blocks, two upsamplings, c7s1-out, tanh.
Upsampling is nearest-neighbour + convolution instead of the paper's transposed convolution:
transposed convolutions cause checkerboard artifacts in translated images and have no fast CPU
path for 3D in torch (see PITFALLS.md).

``UNetGenerator`` wraps MONAI's ``BasicUNet`` with non-trainable upsampling and a tanh output.

Instance normalisation uses per-input statistics (no running statistics) in training and in
evaluation alike, so a generator gives the same output in ``train()`` and ``eval()`` mode (the
train/test mismatch of junyanz CycleGAN issues #555/#1329 cannot occur).

In 3D the ResNet generator's upsample+conv, output convolution and instance norms are the CPU
forms of :mod:`medgan.networks.layers`, and in CPU inference its residual blocks run
channels-last: the same function, parameters and state dict as the textbook layers, 2.6x faster
per sliding window on CPU; other devices run the plain layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from monai.networks.nets import BasicUNet
from torch import nn

from medgan.networks.layers import FewOutputConv3d, InstanceNorm3dCPU, UpsampleConv3d


def _norm(spatial_dims: int, channels: int) -> nn.Module:
    norm_type = InstanceNorm3dCPU if spatial_dims == 3 else Norm[Norm.INSTANCE, spatial_dims]  # same function, faster on CPU
    return norm_type(channels, affine=True, track_running_stats=False)


def _conv_block(spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, upsample: bool = False) -> nn.Sequential:
    conv_type = UpsampleConv3d if upsample else Conv[Conv.CONV, spatial_dims]
    conv = conv_type(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2, padding_mode="reflect", bias=False)
    return nn.Sequential(conv, _norm(spatial_dims, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """``x + conv-norm-relu-conv-norm(x)`` with reflection padding."""

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False),
            _norm(spatial_dims, channels),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, padding_mode="reflect", bias=False),
            _norm(spatial_dims, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and x.device.type == "cpu" and not torch.is_grad_enabled():
            # channels-last on CPU inference: oneDNN's 3x3x3 convolutions and the reflection pads run
            # 15 % faster per block in it (the same values); the next block gets it as it is
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator (Zhu et al. 2017, appendix 7.2) for ``spatial_dims`` 1/2/3.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels, out_channels: image channels.
        ngf: channels of the first layer (doubled at each downsampling).
        n_res_blocks: residual blocks at the lowest resolution (6 or 9 in the paper).
        n_down: stride-2 downsamplings.

    Forward: ``x (B, in_channels, D, H, W)`` in [-1, 1] -> ``(B, out_channels, D, H, W)`` in
    (-1, 1). Any spatial size works: inputs are replicate-padded to a multiple of ``2**n_down``
    and the output cropped back.
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1, ngf: int = 16,
        n_res_blocks: int = 6, n_down: int = 2,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.n_down = spatial_dims, n_down
        layers: list[nn.Module] = [_conv_block(spatial_dims, in_channels, ngf, 7)]
        ch = ngf
        for _ in range(n_down):
            layers.append(_conv_block(spatial_dims, ch, ch * 2, 3, stride=2))
            ch *= 2
        layers += [ResidualBlock(spatial_dims, ch) for _ in range(n_res_blocks)]
        for _ in range(n_down):
            if spatial_dims == 3:
                # upsample+conv in the sub-pixel form, faster on CPU (same weights, same state dict:
                # the Identity keeps the layer indices of nn.Upsample)
                layers += [nn.Identity(), _conv_block(spatial_dims, ch, ch // 2, 3, upsample=True)]
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(spatial_dims, ch, ch // 2, 3)]
            ch //= 2
        out_conv = FewOutputConv3d if spatial_dims == 3 else Conv[Conv.CONV, spatial_dims]  # same weights, faster on CPU
        layers += [out_conv(ch, out_channels, 7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        m = 2**self.n_down
        pad = []
        for s in reversed(size):
            pad += [0, (-s) % m]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        y = self.model(x)
        return y[(..., *[slice(0, s) for s in size])]


class UNetGenerator(nn.Module):
    """MONAI ``BasicUNet`` (non-trainable upsampling) with a tanh output, as a generator.

    Forward: ``(B, in_channels, D, H, W)`` in [-1, 1] -> ``(B, out_channels, D, H, W)`` in (-1, 1);
    any spatial size (``BasicUNet`` pads skip connections).
    """

    def __init__(
        self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 1,
        features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
    ) -> None:
        super().__init__()
        self.unet = BasicUNet(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, features=features,
            norm=("instance", {"affine": True, "track_running_stats": False}), upsample="nontrainable",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.unet(x))
