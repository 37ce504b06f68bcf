"""Layers for any ``spatial_dims``: spectral normalisation of a whole network, self-attention,
and a faster CPU form of few-output-channel 3D convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def apply_spectral_norm(module: nn.Module, n_power_iterations: int = 1) -> nn.Module:
    """Spectrally normalise every convolution, transposed convolution and linear layer of
    ``module`` in place (Miyato et al., "Spectral Normalization for Generative Adversarial
    Networks", ICLR 2018, Eq. 8: ``W / sigma(W)`` with sigma estimated by power iteration).
    Uses torch's ``parametrizations.spectral_norm``; returns ``module``."""
    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    for name, child in list(module.named_children()):
        if isinstance(child, types):
            setattr(module, name, spectral_norm(child, n_power_iterations=n_power_iterations))
        else:
            apply_spectral_norm(child, n_power_iterations)
    return module


class SelfAttention(nn.Module):
    """Self-attention block of SAGAN (Zhang, Goodfellow, Metaxas & Odena, "Self-Attention
    Generative Adversarial Networks", ICML 2019, Eqs. 1-3): ``y = gamma * o + x`` with
    ``o = v(x) softmax(f(x)^T g(x))`` over all positions and ``gamma`` initialised to 0.

    Forward: ``(B, C, *spatial)`` -> same shape; memory grows with ``(prod(spatial))^2``, so use it
    at low resolution in 3D.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        inner = max(1, channels // reduction)
        self.f, self.g = conv(channels, inner, 1), conv(channels, inner, 1)
        self.h, self.v = conv(channels, max(1, channels // 2), 1), conv(max(1, channels // 2), channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        q = self.f(x).flatten(2)  # (B, C', N)
        k = self.g(x).flatten(2)
        attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N): row i attends over j
        h = self.h(x).flatten(2)  # (B, C/2, N)
        o = (h @ attn.transpose(1, 2)).view(b, -1, *x.shape[2:])
        return x + self.gamma * self.v(o)


class DepthTapConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same arguments, parameters and state dict) that, on CPU, computes the
    convolution as ``kernel_size[0]`` convolutions with ``(1, kh, kw)`` kernels, one group of
    output channels per depth tap, summed with a shift along depth. The result is the same up to
    float rounding; gradients flow as usual.

    Why: oneDNN, torch's CPU convolution, runs a 16 -> 1 channel 7x7x7 convolution no faster than
    16 -> 16 (0.22 s for four 64x64x32 windows on 2 cores, both), so the one-channel output layer
    took 40 % of the CycleGAN generator's CPU time; split by depth it takes 0.03-0.06 s. Only
    stride 1, dilation 1, one group and explicit padding take this path; anything else, and any
    other device, runs the plain convolution.

    Forward: ``(B, C_in, D, H, W)`` -> ``(B, C_out, D', H', W')`` as ``nn.Conv3d``.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (input.device.type != "cpu" or self.groups != 1 or self.stride != (1, 1, 1) or self.dilation != (1, 1, 1)
                or isinstance(self.padding, str) or self.kernel_size[0] == 1):
            return super()._conv_forward(input, weight, bias)
        if self.padding_mode != "zeros":
            x = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
        else:
            x = F.pad(input, self._reversed_padding_repeated_twice)
        taps, cout = self.kernel_size[0], self.out_channels
        # (C_out, C_in, kd, kh, kw) -> (kd * C_out, C_in, 1, kh, kw): channel t * C_out + o is tap t of output o
        w = weight.permute(2, 0, 1, 3, 4).reshape(taps * cout, weight.shape[1], 1, *weight.shape[3:])
        z = F.conv3d(x, w)
        depth = z.shape[2] - (taps - 1)
        y = z[:, :cout, :depth].clone()
        for t in range(1, taps):
            y += z[:, t * cout:(t + 1) * cout, t:t + depth]
        return y if bias is None else y + bias.view(1, -1, 1, 1, 1)


# how the three taps (offsets -1, 0, +1) of a 3-wide kernel fall on low-resolution voxels after
# nearest-neighbour x2 upsampling, for even (row 0) and odd (row 1) output voxels
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


class UpsampleConv3d(nn.Conv3d):
    """Nearest-neighbour x2 upsampling followed by this ``nn.Conv3d`` (kernel 3, stride 1,
    padding 1, reflect padding), computed at the low resolution: same parameters and state dict
    as the convolution, same result up to float rounding, gradients as usual.

    After nearest upsampling each output voxel's 3x3x3 neighbourhood covers only 2x2x2 distinct
    input voxels, so each of the 8 output phases is a 2x2x2 convolution of the input with summed
    weights (the "resize-convolution as sub-pixel convolution" identity): 8 x 8 instead of 27
    taps per output voxel, and no upsampled copy. Reflect padding at the high resolution equals
    replicate padding at the low one. On CPU (one thread), for the CycleGAN generator's last
    upsampling (32 -> 16 channels onto 64x64x32) this takes 9.4 ms instead of 21.1 ms; for the
    one before (64 -> 32 onto 32x32x16) it is slower (10.0 vs 8.5 ms: oneDNN runs 2x2x2 kernels
    at a third of its 3x3x3 speed), so the generator uses it for the full-resolution one only.

    Forward: ``(B, C_in, D, H, W)`` -> ``(B, C_out, 2D, 2H, 2W)``. On other devices, or other
    configurations (kernel, stride, padding mode), it upsamples and convolves plainly.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.device.type != "cpu" or self.kernel_size != (3, 3, 3) or self.stride != (1, 1, 1)
                or self.padding != (1, 1, 1) or self.dilation != (1, 1, 1) or self.groups != 1
                or self.padding_mode != "reflect"):
            return super().forward(F.interpolate(input, scale_factor=2, mode="nearest"))
        b, _, d, h, w = input.shape
        x = F.pad(input, (1, 1, 1, 1, 1, 1), mode="replicate")
        taps = _PHASE_TAPS.to(self.weight)
        phases = []
        for pd in (0, 1):
            for ph in (0, 1):
                for pw in (0, 1):
                    k = torch.einsum("xi,yj,zk,ocijk->ocxyz", taps[pd], taps[ph], taps[pw], self.weight)
                    phases.append(F.conv3d(x[:, :, pd:pd + d + 1, ph:ph + h + 1, pw:pw + w + 1], k, self.bias))
        y = torch.stack(phases, 2).view(b, self.out_channels, 2, 2, 2, d, h, w)
        return y.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, self.out_channels, 2 * d, 2 * h, 2 * w)
