"""Golub–Kahan–Lanczos bidiagonalisation with thick restart and full reorthogonalisation.

One step of the block variant with block size ``b`` (``b = 1`` is the classic method):

1. ``W = A P`` for the pending right block ``P`` (one pass, ``b`` products per sample);
2. the part of ``W`` outside span(U), orthonormalised, is the next left block ``Q``;
3. ``A^T Q`` (one pass); its part outside span(V), orthonormalised, is the next ``P``.

The stored products ``AV`` and ``Z = A^T U`` make the projected matrix ``B = U^T (AV)`` exact;
its SVD (float64, LAPACK) gives the Ritz triplets. Because ``AV`` lies in span(U), ``Av = σu``
holds for every Ritz pair, and ``A^T u - σv`` is the part of ``Z`` outside span(V), which lives
in the pending block: its coefficients ``E`` give every residual without a product. When the
basis reaches ``ncv`` vectors it is cut back to the best Ritz vectors (thick restart), keeping
the pending block, which is orthogonal to them. All ``B`` samples iterate in lockstep, so every
pass carries ``B * b`` vectors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..operator import LinearOperator
from .result import SolverConfig, SVDResult

__all__ = ["lanczos_svd", "NotConvergedWarning", "LanczosState", "StopRule"]


@dataclass(frozen=True)
class LanczosState:
    """What a stopping rule sees after a Lanczos step that has at least k Ritz values.

    Attributes:
        step: block steps done so far (each one A pass and one Aᵀ pass).
        values: ``(B, k)`` Ritz values, descending (float64).
        estimates: ``(B, k)`` relative residual estimates of the top-k Ritz triplets, from the
            pending block's coefficients (no product).
        n_products: products spent so far, per sample.
    """

    step: int
    values: Tensor
    estimates: Tensor
    n_products: int
    _V: Tensor
    _Y: Tensor

    def right_vectors(self, r: int | None = None) -> Tensor:
        """The top-``r`` right Ritz vectors, ``(B, n, r)`` in float64 (default ``r = k``)."""
        r = self.values.shape[-1] if r is None else r
        return self._V @ self._Y[..., :r].to(self._V.dtype)


#: ``stop(state) -> bool``: end the iteration early (``stop_reason="callback"``)
StopRule = Callable[[LanczosState], bool]


class NotConvergedWarning(UserWarning):
    """Some singular triplets did not reach the tolerance; see ``SVDResult.converged``."""


def _orthonormalize(
    W: Tensor, basis: Tensor, want: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Orthonormal ``(B, N, want)`` block spanning W's part outside ``basis``, plus the
    ``(B, want, c)`` coefficients of that part in it. Deficient columns (already in the span)
    are replaced by random directions so that the block keeps its size.
    """
    eps = torch.finfo(W.dtype).eps
    c = W.shape[-1]
    if c < want:  # zero columns count as deficient and are filled below
        W = torch.cat([W, W.new_zeros(*W.shape[:-1], want - c)], -1)
    norm0 = W.norm(dim=1).clamp_min(torch.finfo(W.dtype).tiny)
    Wp = W
    for _ in range(2):  # classical Gram-Schmidt, twice, is enough (Giraud et al.)
        if basis.shape[-1]:
            Wp = Wp - basis @ (basis.mT @ Wp)
    Q, R = torch.linalg.qr(Wp)
    bad = R.diagonal(dim1=-2, dim2=-1).abs() <= 1e3 * eps * norm0
    if bad[:, :want].any():
        noise = torch.randn(W.shape, generator=gen, dtype=W.dtype).to(W.device)
        filled = torch.where(bad.unsqueeze(1), noise, Wp)
        for _ in range(2):
            if basis.shape[-1]:
                filled = filled - basis @ (basis.mT @ filled)
        Q, _ = torch.linalg.qr(filled)
    Q = Q[..., :want]
    return Q, Q.mT @ Wp[..., :c]


def _default_ncv(k: int, b: int, m: int, n: int) -> int:
    return min(max(2 * k + 2 * b, k + 16), min(m, n) + b)


def lanczos_svd(
    op: LinearOperator,
    k: int,
    tol: float,
    config: SolverConfig,
    stop: StopRule | None = None,
) -> SVDResult:
    """Top-k singular triplets by thick-restart block Lanczos bidiagonalisation.

    Triplets that ``max_iter`` leaves unbuilt come back with zero vectors, ``S = 0`` and an
    infinite residual, flagged in ``converged`` with a :class:`NotConvergedWarning`.

    Args:
        op: the operator (batched or not); every product goes through ``op.apply``.
        k: triplets wanted. tol: relative residual tolerance. config: solver knobs.
        stop: an optional stopping rule, called after every step once k Ritz values exist
            with a :class:`LanczosState`; returning ``True`` ends the iteration
            (``stop_reason="callback"``). Triplets then report their true residuals, and
            ``converged`` says which met ``tol``; no :class:`NotConvergedWarning` is raised for
            a stop the caller asked for.

    Note:
        A singular value repeated more than ``block_size`` times may be under-counted: in exact
        arithmetic a Krylov space grown from b vectors holds at most b directions of each
        singular subspace. Use ``block_size`` >= the multiplicity, or the dense solver.
    """
    m, n = op.shape
    B, b = op.n_samples, min(config.block_size, m, n)  # a block can't outgrow the matrix
    ncv = config.ncv or _default_ncv(k, b, m, n)
    ncv = max(ncv, k + b)
    # Products run in the network's dtype; the bases are kept in float64, as SLEPc keeps its
    # vectors: in float32 the attainable residual at 64^3 was ~1.5e-4, above the usual tol 1e-4.
    dt, dev = torch.float64, op.device
    gen = torch.Generator().manual_seed(config.seed)
    before_p, before_n = op.n_products, op.n_passes

    V = torch.zeros(B, n, 0, dtype=dt, device=dev)
    AV = torch.zeros(B, m, 0, dtype=dt, device=dev)
    U = torch.zeros(B, m, 0, dtype=dt, device=dev)
    Z = torch.zeros(B, n, 0, dtype=dt, device=dev)
    E = torch.zeros(B, 0, 0, dtype=dt, device=dev)  # (I - VV^T) Z = P E
    start = torch.randn(B, n, b, generator=gen, dtype=dt).to(dev)
    P, _ = _orthonormalize(start, V, min(b, n), gen)
    confirm_failures = 0
    Bm = torch.zeros(B, 0, 0, dtype=torch.float64, device=dev)  # U^T A V, kept up to date
    reason = "max_iter"

    for step in range(1, config.max_iter + 1):
        W = _apply(op, P, forward=True)
        # B = U^T (AV) grows by a column block here and a row block below: O(m p b) per step
        Bm = torch.cat([Bm, (U.mT @ W).double()], -1)
        V, AV = torch.cat([V, P], -1), torch.cat([AV, W], -1)  # Z's outside part is now in V

        bu = min(b, m - U.shape[-1])
        Zq = None
        if bu > 0:
            Q, _ = _orthonormalize(W, U, bu, gen)
            Zq = _apply(op, Q, forward=False)
            U, Z = torch.cat([U, Q], -1), torch.cat([Z, Zq], -1)
            Bm = torch.cat([Bm, (Q.mT @ AV).double()], -2)

        X, S, Yh = torch.linalg.svd(Bm, full_matrices=False)
        Y = Yh.mT
        bv = min(b, n - V.shape[-1])
        if bv > 0:
            src = Zq if Zq is not None else torch.randn(B, n, b, generator=gen, dtype=dt).to(dev)
            P, C = _orthonormalize(src, V, bv, gen)
            E = torch.zeros(B, bv, U.shape[-1], dtype=dt, device=dev)
            if Zq is not None:
                E[..., U.shape[-1] - Zq.shape[-1] :] = C
        else:
            E = torch.zeros(B, 0, U.shape[-1], dtype=dt, device=dev)
        kk = min(k, S.shape[-1])
        est = (E.double() @ X[..., :kk]).norm(dim=1) / S[..., :kk].clamp_min(1e-300)
        if bv == 0:
            reason = "exhausted"
            break
        if kk == k and bool((est <= tol).all()):
            # The estimate is exact arithmetic; confirm with the residuals of the stored
            # products, which is what is reported, so that "converged" is never a near miss.
            if bool((_ritz_residuals(AV, Z, U, V, X, S, Y, k) <= tol).all()):
                reason = "tol"
                break
            confirm_failures += 1
            if confirm_failures >= 20:  # stuck at the precision floor: report, don't spin
                break
        if stop is not None and kk == k:
            spent = (op.n_products - before_p) // B
            if stop(LanczosState(step, S[..., :k], est, spent, V, Y)):
                reason = "callback"
                break
        if V.shape[-1] + bv > ncv:  # thick restart: keep the best Ritz vectors
            keep = max(k, min(ncv - b, (ncv + k) // 2), 1)
            keep = min(keep, S.shape[-1])
            Xl, Yl = X[..., :keep].to(dt), Y[..., :keep].to(dt)
            V, AV, U, Z, E = V @ Yl, AV @ Yl, U @ Xl, Z @ Xl, E @ Xl
            Bm = X[..., :keep].mT @ Bm @ Y[..., :keep]

    X, S, Y = _ritz(U, AV)
    kk = min(k, S.shape[-1])  # max_iter may stop before k Ritz values exist
    Uk = (U @ X[..., :kk].to(dt)).mT
    Vk = (V @ Y[..., :kk].to(dt)).mT
    Sk = S[..., :kk]
    residuals = _ritz_residuals(AV, Z, U, V, X, S, Y, kk)
    if kk < k:  # missing triplets: zero vectors and values, infinite residual (as slepc does)
        Uk = torch.cat([Uk, Uk.new_zeros(B, k - kk, m)], 1)
        Vk = torch.cat([Vk, Vk.new_zeros(B, k - kk, n)], 1)
        Sk = torch.cat([Sk, Sk.new_zeros(B, k - kk)], 1)
        residuals = torch.cat([residuals, residuals.new_full((B, k - kk), float("inf"))], 1)
    converged = residuals <= tol
    if not bool(converged.all()) and reason != "callback":
        bad = (~converged).sum().item()
        warnings.warn(
            f"lanczos: {bad} of {converged.numel()} singular triplets did not reach "
            f"tol={tol} within max_iter={config.max_iter} (see .converged)",
            NotConvergedWarning,
            stacklevel=3,
        )
    return SVDResult(
        U=Uk.reshape(B, k, *op.out_shape),
        S=Sk,
        V=Vk.reshape(B, k, *op.in_shape),
        residuals=residuals,
        converged=converged,
        n_products=(op.n_products - before_p) // B,
        n_passes=op.n_passes - before_n,
        solver=f"lanczos(b={b})",
        tol=tol,
        stop_reason=reason,
    )


def _apply(op: LinearOperator, block: Tensor, *, forward: bool) -> Tensor:
    """``A`` or ``A^T`` on a ``(B, N, c)`` column block, returning ``(B, M, c)``."""
    B, _, c = block.shape
    shape = op.in_shape if forward else op.out_shape
    vecs = block.mT.reshape(B, c, *shape).to(op.dtype)
    out = op.apply(vecs, adjoint=not forward)
    return out.reshape(B, c, -1).mT.to(block.dtype)


def _ritz(U: Tensor, AV: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of the projected matrix ``U^T A V`` in float64: (X, S, Y) with B = X S Y^T."""
    Bm = U.mT.double() @ AV.double()
    X, S, Yh = torch.linalg.svd(Bm, full_matrices=False)
    return X, S, Yh.mT


def _ritz_residuals(
    AV: Tensor, Z: Tensor, U: Tensor, V: Tensor, X: Tensor, S: Tensor, Y: Tensor, k: int
) -> Tensor:
    """Residuals of the top-k Ritz triplets from the stored products (no new ones)."""
    dt = V.dtype
    Xk, Yk = X[..., :k].to(dt), Y[..., :k].to(dt)
    return _residuals_from_products((AV @ Yk).mT, (Z @ Xk).mT, (U @ Xk).mT, (V @ Yk).mT, S[..., :k])


def _residuals_from_products(AVk: Tensor, Zk: Tensor, Uk: Tensor, Vk: Tensor, S: Tensor) -> Tensor:
    """Residuals of Ritz triplets from the stored products ``A v`` and ``A^T u`` (no new ones)."""
    s = S.unsqueeze(-1)
    r1 = (AVk.double() - s * Uk.double()).norm(dim=-1)
    r2 = (Zk.double() - s * Vk.double()).norm(dim=-1)
    return torch.sqrt(r1**2 + r2**2) / S.clamp_min(torch.finfo(torch.float64).tiny)
