"""Orthonormal bases stored as rows: Gram-Schmidt and slab-wise products (Lanczos solver).

A basis is a ``(B, p, N)`` tensor whose rows are orthonormal vectors, one basis per sample. It
may be stored coarser than the arithmetic (float32 rows, float64 sums): every product with it
then reads it a slab of :data:`CHUNK` columns at a time and upcasts the slab, so no full-length
copy is made and the sums keep float64 accuracy. Blocks ``W`` are ``(B, c, N)`` rows in the
arithmetic dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "CHUNK",
    "coefficients",
    "combine",
    "orthonormalize",
    "project_out",
    "rotate",
    "subtract",
]

_ETA = 1 / math.sqrt(2)  # DGKS: refine when the projection removed more than this share

CHUNK = 1 << 14  # columns per slab when a basis stored in float32 is upcast (fits in L2/L3)


def subtract(W: Tensor, coef: Tensor, basis: Tensor) -> None:
    """``W -= coef @ basis`` in place: ``(B, c, N) -= (B, c, p) (B, p, N)``, one GEMM with
    ``beta = 1`` and no full-length temporary (slab by slab when the basis is stored coarser,
    as in :func:`coefficients`)."""
    if basis.dtype == W.dtype:
        W.baddbmm_(coef, basis, alpha=-1)
        return
    for j in range(0, basis.shape[-1], CHUNK):
        W[..., j : j + CHUNK].baddbmm_(coef, basis[..., j : j + CHUNK].to(W.dtype), alpha=-1)


def coefficients(basis: Tensor, W: Tensor) -> Tensor:
    """``basis @ W^T``: ``(B, p, N)`` rows times ``(B, c, N)`` rows, ``(B, p, c)`` in W's dtype.

    A basis stored coarser than ``W`` (float32 bases, float64 arithmetic) is upcast a slab of
    columns at a time, so the sums run in float64 with ``p x`` :data:`CHUNK` numbers of scratch.
    """
    if basis.dtype == W.dtype:
        return basis @ W.mT
    out = W.new_zeros(W.shape[0], basis.shape[1], W.shape[1])
    for j in range(0, W.shape[-1], CHUNK):
        out += basis[..., j : j + CHUNK].to(W.dtype) @ W[..., j : j + CHUNK].mT
    return out


def combine(coef: Tensor, basis: Tensor) -> Tensor:
    """``coef @ basis``: ``(B, r, p)`` times ``(B, p, N)`` rows, ``(B, r, N)`` in coef's dtype
    (slab by slab when the basis is stored coarser, as in :func:`coefficients`)."""
    if basis.dtype == coef.dtype:
        return coef @ basis
    out = coef.new_empty(coef.shape[0], coef.shape[1], basis.shape[-1])
    for j in range(0, basis.shape[-1], CHUNK):
        out[..., j : j + CHUNK] = coef @ basis[..., j : j + CHUNK].to(coef.dtype)
    return out


def rotate(basis: Tensor, coef: Tensor, p: int, chunk: int = CHUNK) -> None:
    """``basis[:, :keep] = coef^T basis[:, :p]`` in place, a slab of columns at a time, so that
    the restart needs ``keep x chunk`` numbers of scratch instead of a second basis (the sums in
    ``coef``'s dtype, float64)."""
    keep = coef.shape[-1]
    for j in range(0, basis.shape[-1], chunk):
        cols = basis[:, :p, j : j + chunk]
        basis[:, :keep, j : j + chunk] = coef.mT @ cols.to(coef.dtype)


def project_out(basis: Tensor, W: Tensor, local: int = 0) -> tuple[Tensor, Tensor]:
    """``W``'s coefficients in ``basis`` and its part outside, by CGS with DGKS refinement.

    ``basis`` is ``(B, p, N)`` with orthonormal rows, ``W`` is ``(B, c, N)``; returns
    ``(C (B, p, c), W - C^T basis)``, the second **in W's storage** (W is overwritten: the
    solver's blocks are its own scratch, so no full-length temporary is made). The Lanczos
    recurrence puts most of ``W`` on the last ``local`` basis vectors; removing that part first
    lets the full pass usually pass the DGKS test without its second sweep.
    """
    p = basis.shape[1]
    if p == 0:
        return W.new_zeros(W.shape[0], 0, W.shape[1]), W
    C = W.new_zeros(W.shape[0], p, W.shape[1])
    if 0 < local < p:
        last = basis[:, p - local :]
        C[:, p - local :] = coefficients(last, W)
        subtract(W, C[:, p - local :].mT, last)
    before = W.norm(dim=-1)
    C1 = coefficients(basis, W)
    subtract(W, C1.mT, basis)
    C += C1
    if bool((W.norm(dim=-1) < _ETA * before).any()):  # one refinement, if needed
        C2 = coefficients(basis, W)
        subtract(W, C2.mT, basis)
        C += C2
    return C, W


def orthonormalize(
    W: Tensor, basis: Tensor, want: int, gen: torch.Generator, local: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """An orthonormal ``(B, want, N)`` block spanning W's part outside ``basis``.

    Returns ``(Q, C, R)``: ``C (B, p, c)`` are W's coefficients in ``basis`` and
    ``R (B, want, c)`` those of its outside part in ``Q``, so ``W = C^T basis + R^T Q``.
    Deficient directions (already in the span) are replaced by random ones orthogonal to both,
    so that the block keeps its size. ``W`` is overwritten (and may become ``Q``).

    One vector (``want = c = 1``, the default block size) is normalised in place, with the sign
    LAPACK's Householder QR gives it: ``Q = w / β``, ``R = β = -sign(w_0) |w|``.
    """
    c = W.shape[1]
    norm0 = W.norm(dim=-1).clamp_min(torch.finfo(W.dtype).tiny)
    C, Wp = project_out(basis, W, local)
    tiny = 1e3 * torch.finfo(W.dtype).eps
    if c == want == 1:
        r = Wp.norm(dim=-1, keepdim=True)  # (B, 1, 1)
        if not bool((r[..., 0] <= tiny * norm0).any()):
            beta = -torch.copysign(r, Wp[..., :1])
            return Wp.div_(beta), C, beta
    if c < want:  # zero rows count as deficient and are filled below
        Wp = torch.cat([Wp, Wp.new_zeros(Wp.shape[0], want - c, Wp.shape[2])], 1)
    Qc, Rc = torch.linalg.qr(Wp.mT)  # (B, N, c'), (B, c', c')
    if c < want:
        norm0 = torch.cat([norm0, norm0.new_ones(norm0.shape[0], want - c)], 1)
    bad = Rc.diagonal(dim1=-2, dim2=-1).abs() <= tiny * norm0
    if bool(bad[:, :want].any()):
        noise = torch.randn(Wp.shape, generator=gen, dtype=W.dtype).to(W.device)
        filled = torch.where(bad.unsqueeze(-1), noise, Wp)
        for _ in range(2):
            _, filled = project_out(basis, filled)
        Qc, _ = torch.linalg.qr(filled.mT)
    Q = Qc[..., :want].mT.contiguous()
    return Q, C, Q @ Wp[:, :c].mT
