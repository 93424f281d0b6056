"""One frozen linear rule per layer type, with its adjoint (paper Table 1).

Each rule is a small ``nn.Module`` that knows two things about one layer at the point x:

* ``forward(*tangents)``: the layer's matrix :math:`A_\\ell[x]` applied to a block of vectors;
* ``adjoint(cotangent)``: :math:`A_\\ell^T[x]` applied to a block, one result per input.

Blocks use the layout ``(b * B, ...)``: ``b`` vectors for each of ``B`` samples, vector-major, so
that per-sample state recorded at x (ReLU masks, max-pool indices) broadcasts as ``(1, B, ...)``.
Biases and normalisation shifts are constant in x and drop out: the rule is the Jacobian.

This module holds the elementwise and structural rules and re-exports the convolution
(:mod:`rprselect.conv_rules`) and pooling (:mod:`rprselect.pool_rules`) ones, so that every rule
is ``rprselect.rules.<Name>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .conv_rules import Conv, ConvTranspose
from .pool_rules import AvgPool, MaxPool, Nearest, SumPoolRule
from .rule_base import Rule, _per_sample
from .rule_base import _upsample_nearest as _upsample_nearest  # re-exported for tests

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
