"""Layers for any ``spatial_dims``: spectral normalisation of a whole network, self-attention,
and faster CPU forms (same function, parameters and state dict) of 3D few-output-channel
convolutions, upsample+conv and instance norm."""

from __future__ import annotations

import functools
import itertools

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


@functools.cache
def _cpu_vector_channels() -> int:
    """float32 lanes of the CPU's widest vectors that torch uses: oneDNN blocks convolution output
    channels by this many, so a convolution with fewer output channels costs as much as one with
    this many."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


class FewOutputConv3d(nn.Conv3d):
    """``nn.Conv3d`` (same arguments, parameters and state dict) for convolutions with few output
    channels, such as a generator's output layer, computed on CPU in a form that fills the
    vector lanes; the result is the same up to float rounding, gradients flow as usual.

    Why: oneDNN, torch's CPU convolution, computes output channels in blocks of 16 (AVX-512; 8 on
    AVX2), so a 16 -> 1 channel 7x7x7 convolution costs as much as 16 -> 16: it took 40 % of the
    CycleGAN generator's CPU time. Two forms, for a 16-channel 64x64x32 window on one thread
    (96 ms plain, ``benchmarks/bench_generator.py``):

    - **without gradients**: a depthwise convolution (each input channel with its own kernel per
      output, ``C_in * C_out`` channels in the lanes, exactly the plain convolution's
      multiply-adds) in channels-last layout, summed over the input channels: 11.1-11.5 ms with
      the padding and the sum (9.6 ms of it the convolution);
    - **with gradients** (depthwise backward is slow in oneDNN): one convolution with
      ``(1, kh, kw / s)`` kernels whose output channels are the ``kernel_size[0]`` depth taps
      times ``s`` pieces of the kernel's width (as many as fill a block), summed with shifts
      along depth and width: 13.4-14.6 ms.

    Only stride 1, dilation 1, one group and explicit padding take these paths; anything else, and
    any other device, runs the plain convolution.

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
        cout, cin, taps, kh, kw = weight.shape
        if not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)):
            # depthwise channel c * C_out + o is input channel c convolved with weight[o, c]
            z = F.conv3d(x.contiguous(memory_format=torch.channels_last_3d),
                         weight.transpose(0, 1).reshape(cin * cout, 1, taps, kh, kw), groups=cin)
            y = z.unflatten(1, (cin, cout)).sum(1)
            return y if bias is None else y + bias.view(1, -1, 1, 1, 1)
        pieces = max(1, min(kw, _cpu_vector_channels() // (taps * cout)))
        width = -(-kw // pieces)  # of each piece; the last is zero-padded to it
        extra = pieces * width - kw
        if extra:
            weight = F.pad(weight, (0, extra))
            x = F.pad(x, (0, extra))  # read only by the zero weights
        # (C_out, C_in, kd, kh, s * q) -> (kd * s * C_out, C_in, 1, kh, q): channel (t * s + p) * C_out + o is
        # depth tap t, width piece p, of output o
        w = weight.view(cout, cin, taps, kh, pieces, width).permute(2, 4, 0, 1, 3, 5)
        z = F.conv3d(x, w.reshape(taps * pieces * cout, cin, 1, kh, width))
        depth, cols = z.shape[2] - (taps - 1), z.shape[4] - (pieces - 1) * width
        y = z[:, :cout, :depth, :, :cols].clone()
        for t in range(taps):
            for p in range(pieces):
                if t or p:
                    c = (t * pieces + p) * cout
                    y += z[:, c:c + cout, t:t + depth, :, p * width:p * width + cols]
        return y if bias is None else y + bias.view(1, -1, 1, 1, 1)


class InstanceNorm3dCPU(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` (same arguments, parameters and state dict; Ulyanov, Vedaldi &
    Lempitsky, "Instance Normalization", arXiv 1607.08022, Eq. 4: ``(x - mean) / sqrt(var + eps)``
    per sample and channel, biased variance, then the affine ``weight``/``bias``) that, on CPU
    when no gradient is needed, computes the statistics in two passes (mean, then the sum and
    the squared sum of the deviations, which also corrects the mean's rounding) and normalises
    in place.

    Why: torch's CPU instance norm goes through its batch-norm statistics kernel, which runs at a
    third of memory speed here: 2.6 ms for a 16-channel 64x64x32 window on one thread, 1.0 ms in
    this form; about 8 % of the CycleGAN generator's time was spent there. Two passes keep the
    variance exact to float rounding (no ``E[x^2] - E[x]^2`` cancellation of the raw values).
    Training, running statistics, other devices, other dtypes and non-contiguous inputs take
    torch's own path.

    Forward: ``(B, C, D, H, W)`` -> same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        need_grad = torch.is_grad_enabled() and (
            input.requires_grad or (self.weight is not None and self.weight.requires_grad))
        channels_last = input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d)
        if (input.device.type != "cpu" or need_grad or self.track_running_stats or input.dim() != 5
                or not (input.is_contiguous() or channels_last) or input.dtype != torch.float32):
            return super().forward(input)
        b, c = input.shape[:2]
        if channels_last and not input.is_contiguous():  # (B, D, H, W, C) in memory: reduce over dim 1 of (B, N, C)
            x, dim = input.permute(0, 2, 3, 4, 1).reshape(b, -1, c), 1
        else:
            x, dim = input.reshape(b, c, -1), 2
        n = x.shape[dim]
        d = x - x.mean(dim, keepdim=True)
        residual = d.sum(dim) / n  # the float32 mean's rounding error, corrected below
        squares = torch.linalg.vecdot(d, d) if dim == 2 else (d * d).sum(dim)  # vecdot only along the last dim is fast
        scale = torch.rsqrt(squares / n - residual * residual + self.eps)  # (B, C)
        shift = -residual * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        d.mul_(scale.unsqueeze(dim)).add_(shift.unsqueeze(dim))
        if dim == 1:
            return d.view(b, *input.shape[2:], c).permute(0, 4, 1, 2, 3)
        return d.view_as(input)


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
    taps per output voxel, and no upsampled copy. The 8 phases run as one convolution with
    ``8 * C_out`` output channels (phase ``(a, b, c)`` is its output shifted by ``(a, b, c)``),
    written interleaved into the output. Reflect padding at the high resolution equals replicate
    padding at the low one. On CPU (one thread), for the CycleGAN generator's upsamplings:
    64 -> 32 channels onto 32x32x16, 3.4 ms instead of 9.1 ms; 32 -> 16 onto 64x64x32, 7.4 ms
    instead of 22 ms.

    Forward: ``(B, C_in, D, H, W)`` -> ``(B, C_out, 2D, 2H, 2W)``. On other devices, or other
    configurations (kernel, stride, padding mode), it upsamples and convolves plainly.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (input.device.type != "cpu" or self.kernel_size != (3, 3, 3) or self.stride != (1, 1, 1)
                or self.padding != (1, 1, 1) or self.dilation != (1, 1, 1) or self.groups != 1
                or self.padding_mode != "reflect"):
            return super().forward(F.interpolate(input, scale_factor=2, mode="nearest"))
        # Without gradients everything runs channels-last (the phases' interleaving then copies
        # runs of C_out channels, and the next layers are faster in it). One thread, channels-last
        # input as in the generator: 64 -> 32 channels onto 32x32x16 4.3 -> 3.6 ms, 32 -> 16 onto
        # 64x64x32 8.8 -> 6.8 ms. Training follows the input's layout (train.channels_last).
        channels_last = not torch.is_grad_enabled() or input.is_contiguous(memory_format=torch.channels_last_3d)
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        input = input.contiguous(memory_format=fmt)
        b, _, d, h, w = input.shape
        co = self.out_channels
        taps = _PHASE_TAPS.to(self.weight)
        # (2, 2, 2, C_out, C_in, 2, 2, 2): the 2x2x2 kernel of each phase
        k = torch.einsum("axi,byj,czk,onijk->abconxyz", taps, taps, taps, self.weight)
        bias = None if self.bias is None else self.bias.repeat(8)
        x = F.pad(input, (1, 1, 1, 1, 1, 1), mode="replicate").contiguous(memory_format=fmt)
        z = F.conv3d(x, k.reshape(8 * co, -1, 2, 2, 2), bias)
        phases = enumerate(itertools.product((0, 1), repeat=3))
        if channels_last:
            zc = z.permute(0, 2, 3, 4, 1)  # (B, D + 1, H + 1, W + 1, 8 C_out)
            y = input.new_empty(b, d, 2, h, 2, w, 2, co)
            for i, (pd, ph, pw) in phases:
                y[:, :, pd, :, ph, :, pw] = zc[:, pd:pd + d, ph:ph + h, pw:pw + w, i * co:(i + 1) * co]
            return y.view(b, 2 * d, 2 * h, 2 * w, co).permute(0, 4, 1, 2, 3)
        y = input.new_empty(b, co, d, 2, h, 2, w, 2)
        for i, (pd, ph, pw) in phases:
            y[:, :, :, pd, :, ph, :, pw] = z[:, i * co:(i + 1) * co, pd:pd + d, ph:ph + h, pw:pw + w]
        return y.view(b, co, 2 * d, 2 * h, 2 * w)
