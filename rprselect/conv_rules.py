"""Convolution rules: a convolution's adjoint is a convolution with the flipped kernel (paper
Table 1), or the transposed convolution when strided; fast CPU paths for one input channel and
for large kernels are in :mod:`rprselect.adjoint_kernels`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .adjoint_kernels import conv_adjoint_fft, conv_adjoint_matmul, conv_spectrum, fft_size
from .rule_base import Rule, _ntuple

__all__ = ["Conv", "ConvTranspose"]

#: smallest (out channels x in channels) whose large-kernel adjoint runs by FFT on the CPU
_FFT_MIN_CHANNELS = 2048

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(
    t: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int
) -> Tensor:
    """A bias-free convolution of a block, through oneDNN on the CPU in float32.

    For a batch of one PyTorch picks its reference kernel (``slow_conv3d``); oneDNN computes the
    same convolution (to float32 rounding, see tests/test_rules_fast_paths.py) and made a
    single-vector adjoint pass of a 3-D PocketUNet 2-3x faster on our 2-core CPU.
    """
    pointwise = groups == 1 and all(kk == 1 for kk in weight.shape[2:])
    # a 1x1 kernel is a matrix product, which PyTorch's own path runs as one (0.4 ms at 8 x 64^3
    # channels in, 2 out) and oneDNN's direct call does not (21 ms)
    if t.device.type == "cpu" and t.dtype == torch.float32 and _ONEDNN and not pointwise:
        d = t.dim() - 2
        return torch.mkldnn_convolution(
            t.contiguous(),
            weight,
            None,
            list(_ntuple(padding, d)),
            list(_ntuple(stride, d)),
            list(_ntuple(dilation, d)),
            groups,
        )
    return _CONV[t.dim() - 2](t, weight, None, stride, padding, dilation, groups)


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class Conv(Rule):
    """Convolution (no bias); adjoint: a convolution with the kernel flipped in space and its
    input and output channels swapped (Table 1: :math:`\\mathcal{C} \\in \\mathbb{R}^{3\\times 3
    \\times 3 \\times \\alpha \\times \\beta} \\mapsto \\tilde{\\mathcal{C}} \\in
    \\mathbb{R}^{3\\times 3\\times 3\\times\\beta\\times\\alpha}`).

    For stride 1 that flipped kernel runs as an ordinary (fast) convolution; strided ones use the
    transposed convolution, which is the same map.
    """

    weight: Tensor
    flipped: Tensor
    spectrum: Tensor

    def __init__(
        self,
        name: str,
        in_shape: tuple[int, ...],
        weight: Tensor,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: int,
    ) -> None:
        super().__init__(name, [in_shape])
        d = weight.dim() - 2
        self.d = d
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.stride, self.dilation = _ntuple(stride, d), _ntuple(dilation, d)
        self.groups = groups
        k = weight.shape[2:]
        if isinstance(padding, str):
            if padding == "valid":
                padding = 0
            else:  # "same": stride is 1; torch pads total = dilation*(k-1), extra on the right
                totals = [dil * (kk - 1) for dil, kk in zip(self.dilation, k, strict=True)]
                if any(t % 2 for t in totals):
                    raise NotImplementedError(f"{name}: padding='same' with an even kernel")
                padding = tuple(t // 2 for t in totals)
        self.padding = _ntuple(padding, d)
        spatial = in_shape[1:]
        out = [
            (n + 2 * p - dil * (kk - 1) - 1) // s + 1
            for n, p, dil, kk, s in zip(
                spatial, self.padding, self.dilation, k, self.stride, strict=True
            )
        ]
        self.output_padding = tuple(
            n - ((o - 1) * s - 2 * p + dil * (kk - 1) + 1)
            for n, o, s, p, dil, kk in zip(
                spatial, out, self.stride, self.padding, self.dilation, k, strict=True
            )
        )
        # stride 1: A^T is the convolution with the flipped, channel-swapped kernel and padding
        # dilation*(k-1) - padding (PyTorch's CPU transposed 3-D convolution is ~5x slower)
        self.flip_padding = tuple(
            dil * (kk - 1) - p for dil, kk, p in zip(self.dilation, k, self.padding, strict=True)
        )
        self.use_flipped = all(st == 1 for st in self.stride) and min(self.flip_padding) >= 0
        # one input channel (MNIST's conv1): on the CPU a matrix product and shifted sums beat
        # oneDNN's one-output-channel convolution 3-4x (rprselect.adjoint_kernels)
        self.use_matmul = (
            d == 2 and groups == 1 and weight.shape[1] == 1 and all(st == 1 for st in self.stride)
        )
        # 5x5 and larger kernels between many channels (MNIST's conv2, 64x32): the convolution
        # theorem beats oneDNN 1.4x (64x32) to 2.1x (128x64) for CPU float32 blocks; with
        # channel products of 512 or less it was no faster, or slower (rprselect.adjoint_kernels)
        self.fft_size: tuple[int, ...] | None = None
        if (
            d == 2
            and groups == 1
            and not self.use_matmul
            and min(k) >= 5
            and weight.shape[0] * weight.shape[1] >= _FFT_MIN_CHANNELS
            and all(st == 1 for st in self.stride)
            and all(dl == 1 for dl in self.dilation)
            and weight.dtype == torch.float32
        ):
            self.fft_size = fft_size(tuple(out), tuple(k), self.padding, tuple(spatial))
            self.register_buffer(
                "spectrum", conv_spectrum(weight.detach(), self.fft_size), persistent=False
            )
        g, o, i = groups, weight.shape[0], weight.shape[1]
        flipped = weight.detach().reshape(g, o // g, i, *k).transpose(1, 2)
        flipped = flipped.reshape(g * i, o // g, *k).flip(tuple(range(2, 2 + d)))
        self.register_buffer("flipped", flipped.contiguous(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        return _conv(t, self.weight, self.stride, self.padding, self.dilation, self.groups)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        if self.use_matmul and z.device.type == "cpu":
            spatial = self.in_shapes[0][1:]
            return [conv_adjoint_matmul(z, self.weight, self.padding, self.dilation, spatial)]
        if self.fft_size is not None and z.device.type == "cpu" and z.dtype == torch.float32:
            spatial = self.in_shapes[0][1:]
            return [conv_adjoint_fft(z, self.spectrum, self.fft_size, self.padding, spatial)]
        if self.use_flipped:
            return [_conv(z, self.flipped, 1, self.flip_padding, self.dilation, self.groups)]
        return [
            _CONV_T[self.d](
                z,
                self.weight,
                None,
                self.stride,
                self.padding,
                self.output_padding,
                self.groups,
                self.dilation,
            )
        ]

    def extra_repr(self) -> str:
        if self.use_matmul:
            return f"{self.name}: adjoint = weight^T product + shifted sums (CPU), else flipped"
        if self.fft_size is not None:
            return f"{self.name}: adjoint = FFT on a {self.fft_size} grid (CPU float32)"
        if self.use_flipped:
            return (
                f"{self.name}: adjoint = Conv{self.d}d(flipped weight {tuple(self.flipped.shape)})"
            )
        return f"{self.name}: adjoint = ConvTranspose{self.d}d(weight {tuple(self.weight.shape)})"


class ConvTranspose(Rule):
    """Transposed convolution (no bias); adjoint: the plain convolution with the same kernel."""

    weight: Tensor

    def __init__(
        self,
        name: str,
        in_shape: tuple[int, ...],
        weight: Tensor,
        stride: Any,
        padding: Any,
        output_padding: Any,
        groups: int,
        dilation: Any,
    ) -> None:
        super().__init__(name, [in_shape])
        d = weight.dim() - 2
        self.d = d
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.stride, self.padding = _ntuple(stride, d), _ntuple(padding, d)
        self.output_padding, self.dilation = _ntuple(output_padding, d), _ntuple(dilation, d)
        self.groups = groups

    def forward(self, t: Tensor) -> Tensor:
        return _CONV_T[self.d](
            t,
            self.weight,
            None,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [
            _CONV[self.d](
                z, self.weight, None, self.stride, self.padding, self.dilation, self.groups
            )
        ]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = Conv{self.d}d(weight {tuple(self.weight.shape)})"
