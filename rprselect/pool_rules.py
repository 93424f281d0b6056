"""Pooling and resampling rules: max pooling frozen to x's argmax, average and sum pooling,
nearest-neighbour resampling; each with its exact adjoint (paper Table 1, Lemmas 1-3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .rule_base import Rule, _ntuple, _repeat_rows, _upsample_nearest

__all__ = ["MaxPool", "AvgPool", "SumPoolRule", "Nearest"]


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
