"""Layers of the paper's bias-free CNNs that PyTorch lacks.

PyTorch has no sum pooling. ``SumPool`` is average pooling scaled by the window volume, so that
its matrix is the paper's :math:`A_\\downarrow` (Lemma 1), the exact adjoint of nearest-neighbour
upsampling (Lemma 3). The Adjoint CNN tracer treats it as one leaf layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SumPool", "NearestUpsample"]

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class SumPool(nn.Module):
    """Non-overlapping sum pooling over ``dims`` spatial dimensions (paper Lemma 1).

    Args:
        dims: number of spatial dimensions (1, 2 or 3).
        kernel_size: window edge; the stride equals it, as in the paper.

    Example:
        >>> SumPool(2)(torch.ones(1, 1, 4, 4))[0, 0]
        tensor([[4., 4.],
                [4., 4.]])
    """

    def __init__(self, dims: int, kernel_size: int = 2) -> None:
        super().__init__()
        if dims not in _AVG_POOL:
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.dims = dims
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(self.kernel_size**self.dims)
        return _AVG_POOL[self.dims](x, self.kernel_size) * scale

    def extra_repr(self) -> str:
        return f"dims={self.dims}, kernel_size={self.kernel_size}"


class NearestUpsample(nn.Module):
    """Nearest-neighbour upsampling by an integer factor (paper Lemma 2), adjoint of ``SumPool``."""

    def __init__(self, scale_factor: int = 2) -> None:
        super().__init__()
        if scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {scale_factor}")
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=float(self.scale_factor), mode="nearest")

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"
