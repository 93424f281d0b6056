"""One frozen linear rule per layer type, with its adjoint (paper Table 1).

Each rule is a small ``nn.Module`` that knows two things about one layer at the point x:

* ``forward(*tangents)``: the layer's matrix :math:`A_\\ell[x]` applied to a block of vectors;
* ``adjoint(cotangent)``: :math:`A_\\ell^T[x]` applied to a block, one result per input.

Blocks use the layout ``(b * B, ...)``: ``b`` vectors for each of ``B`` samples, vector-major, so
that per-sample state recorded at x (ReLU masks, max-pool indices) broadcasts as ``(1, B, ...)``.
Biases and normalisation shifts are constant in x and drop out: the rule is the Jacobian.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adjoint_kernels import conv_adjoint_fft, conv_adjoint_matmul, conv_spectrum, fft_size

__all__ = [
    "Rule",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Mask",
    "MaxPool",
    "AvgPool",
    "SumPoolRule",
    "Nearest",
    "ChannelScale",
    "Scale",
    "Reshape",
    "Permute",
    "Slice",
    "Concat",
    "Sum",
    "Identity",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _ntuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _conv(
    t: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int
) -> Tensor:
    """A bias-free convolution of a block, through oneDNN on the CPU in float32.

    For a batch of one PyTorch picks its reference kernel (``slow_conv3d``); oneDNN computes the
    same convolution (to float32 rounding, see tests/test_rules_fast_paths.py) and made a
    single-vector adjoint pass of a 3-D PocketUNet 2-3x faster on our 2-core CPU.
    """
    if t.device.type == "cpu" and t.dtype == torch.float32 and _ONEDNN:
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


def _upsample_nearest(z: Tensor, k: int) -> Tensor:
    """Nearest-neighbour upsampling by an integer factor as a broadcast copy (Lemma 2).

    Same values as ``F.interpolate(z, scale_factor=k)``, measured 2.4x faster on the CPU.
    """
    lead, spatial = z.shape[:2], z.shape[2:]
    view = z.reshape(*lead, *(s for n in spatial for s in (n, 1)))
    shape = (*lead, *(s for n in spatial for s in (n, k)))
    return view.expand(shape).reshape(*lead, *(n * k for n in spatial))


def _per_sample(t: Tensor, state: Tensor) -> Tensor:
    """Multiply a ``(b*B, ...)`` block by a per-sample ``(B, ...)`` state."""
    return (t.reshape(-1, *state.shape) * state).reshape(t.shape)


def _repeat_rows(state: Tensor, rows: int) -> Tensor:
    """Tile a per-sample ``(B, ...)`` tensor to ``(rows, ...)`` in the block layout."""
    return state.repeat(rows // state.shape[0], *([1] * (state.dim() - 1)))


class Rule(nn.Module):
    """A frozen layer :math:`A_\\ell[x]` and its adjoint. ``in_shapes`` are per-sample shapes."""

    def __init__(self, name: str, in_shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        self.name = name
        self.in_shapes = [tuple(s) for s in in_shapes]

    def adjoint(self, z: Tensor) -> list[Tensor]:
        raise NotImplementedError


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
        # 5x5 and larger kernels into several channels (MNIST's conv2): the convolution theorem
        # beats oneDNN 1.4x for CPU float32 blocks (rprselect.adjoint_kernels)
        self.fft_size: tuple[int, ...] | None = None
        if (
            d == 2
            and groups == 1
            and not self.use_matmul
            and min(k) >= 5
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


class Dense(Rule):
    """Linear layer (no bias); adjoint: multiplication by the transposed weight."""

    weight: Tensor

    def __init__(self, name: str, in_shape: tuple[int, ...], weight: Tensor) -> None:
        super().__init__(name, [in_shape])
        self.register_buffer("weight", weight.detach(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        return F.linear(t, self.weight)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [z @ self.weight]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = Linear(weight^T {tuple(self.weight.shape[::-1])})"


class Mask(Rule):
    """ReLU or LeakyReLU frozen to x's pattern: multiply by the recorded slope (Table 1)."""

    slope: Tensor

    def __init__(self, name: str, in_shape: tuple[int, ...], slope: Tensor) -> None:
        super().__init__(name, [in_shape])
        self.register_buffer("slope", slope, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        return _per_sample(t, self.slope)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [_per_sample(z, self.slope)]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = frozen activation mask"


class MaxPool(Rule):
    """Max pooling frozen to x's argmax; adjoint: zero-stuffing at those positions (Table 1)."""

    indices: Tensor

    def __init__(self, name: str, in_shape: tuple[int, ...], indices: Tensor) -> None:
        super().__init__(name, [in_shape])
        self.register_buffer("indices", indices.flatten(2), persistent=False)
        self.out_spatial = tuple(indices.shape[2:])

    def forward(self, t: Tensor) -> Tensor:
        idx = _repeat_rows(self.indices, t.shape[0])
        return t.flatten(2).gather(2, idx).reshape(t.shape[0], t.shape[1], *self.out_spatial)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        idx = _repeat_rows(self.indices, z.shape[0])
        shape = self.in_shapes[0]
        out = z.new_zeros(z.shape[0], shape[0], math.prod(shape[1:]))
        out.scatter_add_(2, idx, z.flatten(2))
        return [out.reshape(z.shape[0], *shape)]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = zero-stuffing at the recorded argmax"


class AvgPool(Rule):
    """Average pooling (input independent); adjoint: ATen's exact average-pool backward kernel."""

    def __init__(
        self,
        name: str,
        in_shape: tuple[int, ...],
        kernel_size: Any,
        stride: Any,
        padding: Any,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
    ) -> None:
        super().__init__(name, [in_shape])
        d = len(in_shape) - 1
        if d not in (1, 2, 3):
            raise NotImplementedError(f"{name}: {d}-D average pooling")
        self.d = d
        self.kernel_size = _ntuple(kernel_size, d)
        self.stride = _ntuple(stride if stride is not None and stride != [] else kernel_size, d)
        self.padding = _ntuple(padding, d)
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def _as2d(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return (1, *self.kernel_size), (1, *self.stride), (0, *self.padding)

    def forward(self, t: Tensor) -> Tensor:
        if self.d == 1:
            k, s, p = self._as2d()
            return F.avg_pool2d(
                t.unsqueeze(2),
                k,
                s,
                p,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            ).squeeze(2)
        pool = F.avg_pool2d if self.d == 2 else F.avg_pool3d
        return pool(
            t,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def adjoint(self, z: Tensor) -> list[Tensor]:
        shape = (z.shape[0], *self.in_shapes[0])
        if self.d == 1:
            k, s, p = self._as2d()
            like = z.new_zeros(()).expand(shape[0], shape[1], 1, shape[2])
            out = torch.ops.aten.avg_pool2d_backward(
                z.unsqueeze(2),
                like,
                k,
                s,
                p,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )
            return [out.squeeze(2)]
        backward = (
            torch.ops.aten.avg_pool2d_backward
            if self.d == 2
            else torch.ops.aten.avg_pool3d_backward
        )
        like = z.new_zeros(()).expand(shape)
        return [
            backward(
                z,
                like,
                self.kernel_size,
                self.stride,
                self.padding,
                self.ceil_mode,
                self.count_include_pad,
                self.divisor_override,
            )
        ]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = spread each value evenly over its window"


class SumPoolRule(Rule):
    """Sum pooling (paper Lemma 1); adjoint: nearest-neighbour upsampling (Lemma 3).

    Like the layer, a size not divisible by the window drops its trailing remainder; the
    adjoint sends zeros there.
    """

    def __init__(self, name: str, in_shape: tuple[int, ...], kernel_size: int) -> None:
        super().__init__(name, [in_shape])
        self.d = len(in_shape) - 1
        self.k = kernel_size

    def forward(self, t: Tensor) -> Tensor:
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[self.d]
        return pool(t, self.k) * float(self.k**self.d)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        up = _upsample_nearest(z, self.k)
        pad: list[int] = []  # F.pad lists the last axis first
        spatial = zip(reversed(self.in_shapes[0][1:]), reversed(up.shape[2:]), strict=True)
        for size, covered in spatial:
            pad += [0, size - covered]
        return [F.pad(up, pad) if any(pad) else up]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = nearest-neighbour upsampling x{self.k}"


class Nearest(Rule):
    """Nearest-neighbour resampling; adjoint: sum of each source's copies (sum pooling).

    The source index of every output voxel is found once by resampling an index grid, so any
    nearest/nearest-exact size or scale factor is exact.
    """

    source: Tensor

    def __init__(
        self, name: str, in_shape: tuple[int, ...], resample: Callable[[Tensor], Tensor]
    ) -> None:
        super().__init__(name, [in_shape])
        spatial = in_shape[1:]
        grid = torch.arange(math.prod(spatial), dtype=torch.float64).reshape(1, 1, *spatial)
        src = resample(grid)
        self.out_spatial = tuple(src.shape[2:])
        self.register_buffer("source", src.flatten().long(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        flat = t.flatten(2).index_select(2, self.source)
        return flat.reshape(t.shape[0], t.shape[1], *self.out_spatial)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        shape = self.in_shapes[0]
        out = z.new_zeros(z.shape[0], shape[0], math.prod(shape[1:]))
        out.index_add_(2, self.source, z.flatten(2))
        return [out.reshape(z.shape[0], *shape)]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = sum pooling onto nearest sources"


class ChannelScale(Rule):
    """Eval-mode batch norm: a per-channel scale (its shift is constant and drops out)."""

    scale: Tensor

    def __init__(self, name: str, in_shape: tuple[int, ...], scale: Tensor) -> None:
        super().__init__(name, [in_shape])
        shape = (1, -1) + (1,) * (len(in_shape) - 1)
        self.register_buffer("scale", scale.detach().reshape(shape), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        return t * self.scale

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [z * self.scale]

    def extra_repr(self) -> str:
        return f"{self.name}: adjoint = the same per-channel scale"


class Scale(Rule):
    """Multiplication by a constant (scalar or broadcast tensor)."""

    def __init__(self, name: str, in_shape: tuple[int, ...], factor: Tensor | float) -> None:
        super().__init__(name, [in_shape])
        self.factor = factor

    def forward(self, t: Tensor) -> Tensor:
        return t * self.factor

    def adjoint(self, z: Tensor) -> list[Tensor]:
        out = z * self.factor
        return [out.sum_to_size(z.shape[0], *self.in_shapes[0])]


class Reshape(Rule):
    """view/reshape/flatten/squeeze/unsqueeze of the non-batch dimensions; adjoint: reshape back.

    Both directions use the shapes recorded at x, so sizes computed inside ``forward``
    (``x.view(x.size(0), -1)``) need no re-evaluation.
    """

    def __init__(self, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__(name, [in_shape])
        self.out_shape = tuple(out_shape)

    def forward(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *self.out_shape)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [z.reshape(z.shape[0], *self.in_shapes[0])]


class Permute(Rule):
    """permute/transpose of non-batch dimensions; adjoint: the inverse permutation."""

    def __init__(self, name: str, in_shape: tuple[int, ...], dims: Sequence[int]) -> None:
        super().__init__(name, [in_shape])
        n = len(in_shape) + 1
        self.dims = [d % n for d in dims]
        if self.dims[0] != 0:
            raise NotImplementedError(f"{name}: a permutation that moves the batch dimension")
        self.inverse = [self.dims.index(i) for i in range(n)]

    def forward(self, t: Tensor) -> Tensor:
        return t.permute(self.dims)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [z.permute(self.inverse)]


class Slice(Rule):
    """Basic indexing ``t[index]`` that keeps the batch dimension; adjoint: scatter back."""

    def __init__(self, name: str, in_shape: tuple[int, ...], index: Any) -> None:
        super().__init__(name, [in_shape])
        index = index if isinstance(index, tuple) else (index,)
        consumed = sum(1 for i in index[1:] if i is not None and i is not Ellipsis)
        if index and index[0] is Ellipsis and consumed <= len(in_shape):
            index = (slice(None), *index)  # t[..., 0]: the ellipsis spans the batch dimension
        if not index or index[0] != slice(None):
            raise NotImplementedError(f"{name}: indexing that selects along the batch dimension")
        for i in index:
            if not (isinstance(i, (slice, int)) or i is None or i is Ellipsis):
                raise NotImplementedError(f"{name}: advanced indexing")
        self.index = index

    def forward(self, t: Tensor) -> Tensor:
        return t[self.index]

    def adjoint(self, z: Tensor) -> list[Tensor]:
        out = z.new_zeros(z.shape[0], *self.in_shapes[0])
        out[self.index] = z
        return [out]


class Concat(Rule):
    """A skip connection's concatenation; adjoint: split, then each branch goes its way (Table 1).

    ``linear`` flags which inputs depend on x; constant inputs get zero tangents.
    """

    def __init__(
        self, name: str, in_shapes: Sequence[tuple[int, ...]], dim: int, linear: Sequence[bool]
    ) -> None:
        super().__init__(name, in_shapes)
        self.dim = dim % (len(in_shapes[0]) + 1)
        if self.dim == 0:
            raise NotImplementedError(f"{name}: concatenation along the batch dimension")
        self.linear = list(linear)
        self.sizes = [s[self.dim - 1] for s in in_shapes]

    def forward(self, *ts: Tensor) -> Tensor:
        it = iter(ts)
        rows = ts[0].shape[0]
        parts = [
            next(it) if lin else ts[0].new_zeros(rows, *shape)
            for lin, shape in zip(self.linear, self.in_shapes, strict=True)
        ]
        return torch.cat(parts, self.dim)

    def adjoint(self, z: Tensor) -> list[Tensor]:
        parts = torch.split(z, self.sizes, self.dim)
        return [p for p, lin in zip(parts, self.linear, strict=True) if lin]


class Sum(Rule):
    """A residual sum ``a + b`` (or difference); adjoint: fan the cotangent out to each input."""

    def __init__(
        self, name: str, in_shapes: Sequence[tuple[int, ...]], signs: Sequence[float]
    ) -> None:
        super().__init__(name, in_shapes)
        self.signs = list(signs)

    def forward(self, *ts: Tensor) -> Tensor:
        out = ts[0] * self.signs[0] if self.signs[0] != 1 else ts[0]
        for s, t in zip(self.signs[1:], ts[1:], strict=True):
            out = out + t if s == 1 else out + s * t
        return out

    def adjoint(self, z: Tensor) -> list[Tensor]:
        rows = z.shape[0]
        return [
            (z if s == 1 else s * z).sum_to_size(rows, *shape)
            for s, shape in zip(self.signs, self.in_shapes, strict=True)
        ]


class Identity(Rule):
    """Dropout and Identity in eval mode, ``contiguous``, dtype-preserving no-ops."""

    def forward(self, t: Tensor) -> Tensor:
        return t

    def adjoint(self, z: Tensor) -> list[Tensor]:
        return [z]
