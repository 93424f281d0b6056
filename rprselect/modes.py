"""Running a model for linearisation: the checks on the points x, and eval mode for the duration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["eval_mode", "check_points"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, restoring each module's own mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def check_points(X: Tensor, name: str) -> None:
    """Raise unless ``X`` ``(B, ...)`` is finite floating point with no all-zero sample."""
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {X.dtype}")
    bad = ~torch.isfinite(X)
    if bad.any():
        where = bad.reshape(X.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite, got NaN or Inf (in sample(s) {where[:10]})")
    zero = X.reshape(X.shape[0], -1).abs().amax(1) == 0
    if zero.any():
        where = zero.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must not be all zeros (RPR is undefined), got an all-zero "
            f"sample at index {where[:10]}"
        )
