"""Projection ratios and low-rank predictions (paper Eq. 8, 10, 13).

Every function accepts a single :class:`~rprselect.SVDResult` with a sample, or a batched one
with a batch of samples; the output gains the same leading dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .solvers.result import SVDResult

__all__ = ["rpr", "lpr", "label_logits", "rank_k_logits"]


def _coefficients(vectors: Tensor, x: Tensor, batched: bool, name: str) -> Tensor:
    """``(..., k)`` coefficients of x on the k vectors, in float64."""
    lead = 1 if batched else 0
    shape = tuple(vectors.shape[lead + 1 :])
    want = tuple(vectors.shape[:lead]) + shape
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != want:
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN or Inf")
    xf = x.reshape(*x.shape[:lead], 1, -1).double().to(vectors.device)
    vf = vectors.reshape(*vectors.shape[: lead + 1], -1).double()
    return (vf * xf).sum(-1)


def _ratio(vectors: Tensor, x: Tensor, batched: bool, name: str) -> Tensor:
    c = _coefficients(vectors, x, batched, name)
    norm2 = x.double().reshape(*x.shape[: 1 if batched else 0], -1).pow(2).sum(-1)
    if bool((norm2 == 0).any()):
        raise ValueError(f"{name} must not be all zeros: the projection ratio is undefined")
    return c.pow(2).cumsum(-1) / norm2.to(c.device).unsqueeze(-1)


def rpr(result: SVDResult, x: Tensor) -> Tensor:
    """Right Projection Ratio for ranks 1..k (Eq. 10).

    .. math:: \\mathrm{RPR}(x; r) = \\frac{\\|V_r V_r^T x\\|_2^2}{\\|x\\|_2^2} \\in [0, 1]

    A value near 0 means x lies near the nullspace of A[x]: the model is likely to fail on it.

    Args:
        result: the SVD of A[x].
        x: the sample ``(C, *spatial)`` (``(B, C, *spatial)`` for a batched result).

    Returns:
        ``(k,)`` float64, non-decreasing in the rank (``(B, k)`` when batched).
    """
    return _ratio(result.V, x, result.batched, "x")


def lpr(result: SVDResult, y: Tensor) -> Tensor:
    """Left Projection Ratio for ranks 1..k (Eq. 13).

    .. math:: \\mathrm{LPR}(y; r) = \\frac{\\|U_r U_r^T y\\|_2^2}{\\|y\\|_2^2}

    Args:
        result: the SVD of A[x].
        y: a label in the output space, e.g. :func:`label_logits` for a class.

    Returns:
        ``(k,)`` float64 (``(B, k)`` when batched).
    """
    return _ratio(result.U, y, result.batched, "y")


def label_logits(label: int | Tensor, num_classes: int, scale: float = 2.0) -> Tensor:
    """The paper's ±2 label map: ``+scale`` at the label, ``-scale`` elsewhere (Section 1.3).

    After softmax with 10 classes the label gets about 0.86 and each other class 0.016.

    Args:
        label: a class index, or a tensor of them.
        num_classes: number of classes.
        scale: the magnitude of the logits.

    Returns:
        ``(num_classes,)`` float64, or ``(*label.shape, num_classes)``.

    Example:
        >>> label_logits(1, 3)
        tensor([-2.,  2., -2.], dtype=torch.float64)
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    lab = torch.as_tensor(label)
    if lab.is_floating_point() or bool(((lab < 0) | (lab >= num_classes)).any()):
        raise ValueError(f"label must be integers in [0, {num_classes}), got {label}")
    onehot = torch.nn.functional.one_hot(lab.long(), num_classes).double()
    return scale * (2.0 * onehot - 1.0)


def rank_k_logits(result: SVDResult, x: Tensor, r: int) -> Tensor:
    """Output of the rank-r CNN (Eq. 8): ``A_r[x] x = sum_{i<=r} s_i u_i (v_i^T x)``.

    Args:
        result: the SVD of A[x] with at least r triplets.
        x: the sample (batched like ``result``).
        r: the rank, ``1 <= r <= k``.

    Returns:
        float64 tensor of the output shape (with the leading ``B`` when batched).
    """
    if not 1 <= r <= result.k:
        raise ValueError(f"r must satisfy 1 <= r <= k = {result.k}, got {r}")
    c = _coefficients(result.V, x, result.batched, "x")[..., :r]
    weights = result.S.double()[..., :r].to(c.device) * c
    U = result.U.double()
    return _combine(weights, U[:, :r] if result.batched else U[:r])


def _combine(weights: Tensor, U: Tensor) -> Tensor:
    lead = weights.dim() - 1
    flat = U.reshape(*U.shape[: lead + 1], -1)
    out = (weights.unsqueeze(-1) * flat).sum(lead)
    return out.reshape(*U.shape[:lead], *U.shape[lead + 1 :])
