"""Golub–Kahan–Lanczos bidiagonalisation with thick restart and full reorthogonalisation.

One step of the block variant with block size ``b`` (``b = 1`` is the classic method):

1. ``W = A P`` for the pending right block ``P`` (one pass, ``b`` products per sample);
2. the part of ``W`` outside span(U), orthonormalised, is the next left block ``Q``;
3. ``A^T Q`` (one pass); its part outside span(V), orthonormalised, is the next ``P``.

Only the two bases are kept, in preallocated buffers written in place (rows are vectors, so
every active basis is a contiguous slice), stored in float64 or float32 with every sum over them
in float64 (:mod:`rprselect.solvers.basis`). The products are not stored: they are
recovered from the projected matrix ``B = U^T A V``, which the orthogonalisation coefficients
give column block by column block:

.. math::
    A V = U B, \\qquad A^T U = V B^T + P E,

where ``E`` holds the coefficients of ``A^T U``'s part outside span(V), which is the pending
block. With ``B = X S Y^T`` (float64, LAPACK), every Ritz triplet ``(σ, u = U x, v = V y)``
has ``A v = σ u`` exactly and ``A^T u - σ v = P E x``, so its residual is ``|E x|`` without a
product. When the basis reaches ``ncv`` vectors it is cut back to the best ``keep >= k + 7``
Ritz vectors (thick restart: ``B`` becomes ``diag(S)``, ``E`` becomes ``E X``), keeping the
pending block, which is orthogonal to them. The converged leading triplets are always among
the kept vectors. All ``B`` samples iterate in lockstep, so every pass carries ``B * b``
vectors. Orthogonalisation is classical Gram-Schmidt with one refinement pass when the
DGKS criterion asks for it (``|w'| < |w| / sqrt(2)``), as SLEPc does.

**Locking** (``SolverConfig.lock``): at a restart, the leading triplets that met ``tol`` in
every sample are frozen (rows ``:L`` of both bases). Later steps take the SVD of the unlocked
block ``B_AA`` only; ``A v - σ u = U_L (B_LA y)`` for an unlocked triplet, the coupling to the
locked left vectors, enters its residual next to ``|E x|``, and a locked triplet keeps the
residual it had when it was locked (its vectors no longer change), so every reported residual
is the one explicit products would measure.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..operator import LinearOperator
from .basis import coefficients, combine, orthonormalize, rotate
from .memory import fit_ncv, storage_for_budget
from .result import SolverConfig, SVDResult

__all__ = [
    "lanczos_svd",
    "NotConvergedWarning",
    "LanczosState",
    "StopRule",
    "restart_keep",
]


@dataclass(frozen=True)
class LanczosState:
    """What a stopping rule sees after a Lanczos step that has at least k Ritz values.

    The state is valid only during the call: its basis is a view of the solver's buffer.

    Attributes:
        step: block steps done so far (each one A pass and one Aᵀ pass).
        values: ``(B, k)`` Ritz values, descending (float64). They are lower bounds of the
            true singular values (Cauchy interlacing), ``values[:, i] <= σ_i``; once triplets
            are locked, up to the locked triplets' residuals (the coupling dropped by locking).
        estimates: ``(B, k)`` relative residuals of the top-k Ritz triplets,
            ``sqrt(|A^T u - σ v|^2 + |A v - σ u|^2) / σ`` (the second term is zero while
            nothing is locked), from the projected matrix (no product).
        n_products: products spent so far, per sample.
        next_value: ``(B,)`` Ritz value k + 1 (0 when the projected matrix has only k).
        next_residual: ``(B,)`` absolute residual of Ritz triplet k + 1 (``inf`` when none).
        residual_norm: ``(B,)`` spectral norm of the top-k residual block
            ``[A^T U_k - V_k Σ_k; A V_k - U_k Σ_k]`` (``A V_k = U_k Σ_k`` exactly while nothing
            is locked; then it is ``|E X_k|_2``), an upper bound once triplets are locked.
        tail_values: ``(B, r - k)`` the Ritz values after the k-th, descending (``r`` is the
            size of the projected matrix; empty when ``r = k``).
        tail_residuals: ``(B, r - k)`` their absolute residuals (both sides, see
            ``residual_norm``).
        locked: triplets locked so far (frozen at a restart, see ``SolverConfig.lock``).
        locked_mask: ``(B, r)`` which of the step's Ritz triplets (``values`` then
            ``tail_values``) are locked; ``None`` means none is.
    """

    step: int
    values: Tensor
    estimates: Tensor
    n_products: int
    next_value: Tensor
    next_residual: Tensor
    residual_norm: Tensor
    tail_values: Tensor
    tail_residuals: Tensor
    _V: Tensor  # (B, p, n) rows: the right basis
    _Y: Tensor  # (B, p, r) right singular vectors of the projected matrix
    locked: int = 0
    locked_mask: Tensor | None = None

    def right_vectors(self, r: int | None = None) -> Tensor:
        """The top-``r`` right Ritz vectors, ``(B, n, r)`` in float64 (default ``r = k``)."""
        r = self.values.shape[-1] if r is None else r
        return combine(self._Y[..., :r].mT, self._V).mT

    def coefficients(self, x: Tensor) -> Tensor:
        """``V_k^T x`` for one vector per sample, ``x`` of shape ``(B, n)``: ``(B, k)``.

        Costs one pass over the basis (no product); RPR(x; k) is ``|V_k^T x|^2 / |x|^2``.
        """
        c = coefficients(self._V, x.to(self._Y.dtype).unsqueeze(1))  # (B, p, 1)
        return (self._Y[..., : self.values.shape[-1]].mT @ c)[..., 0]


#: ``stop(state) -> bool``: end the iteration early (``stop_reason="callback"``)
StopRule = Callable[[LanczosState], bool]


class NotConvergedWarning(UserWarning):
    """Some singular triplets did not reach the tolerance; see ``SVDResult.converged``."""


def _default_ncv(k: int, b: int, m: int, n: int) -> int:
    return min(max(2 * k + 2 * b, k + 16), min(m, n) + b)


def restart_keep(k: int, ncv: int, b: int, available: int) -> int:
    """Ritz vectors kept at a thick restart: at least ``k + 7`` (half the gap to ``ncv``
    when that is more), at most ``ncv - b`` so that a block step fits, and at most what
    exists."""
    keep = max(k + 7, (ncv + k) // 2)
    return max(min(keep, ncv - b, available), min(k, available), 1)


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
    Memory: the two bases, ``(ncv + b) (m + n)`` float64 numbers per sample, and one block.

    Args:
        op: the operator (batched or not); every product goes through ``op.apply``.
        k: triplets wanted. tol: relative residual tolerance. config: solver knobs.
        stop: an optional stopping rule, called after every step once k Ritz values exist
            with a :class:`LanczosState`; returning ``True`` ends the iteration
            (``stop_reason="callback"``). Triplets then report their residuals, and
            ``converged`` says which met ``tol``; no :class:`NotConvergedWarning` is raised for
            a stop the caller asked for.

    Note:
        A singular value repeated more than ``block_size`` times may be under-counted: in exact
        arithmetic a Krylov space grown from b vectors holds at most b directions of each
        singular subspace. Use ``block_size`` >= the multiplicity, or the dense solver.
    """
    m, n = op.shape
    B, b = op.n_samples, min(config.block_size, m, n)  # a block can't outgrow the matrix
    ncv = max(config.ncv or _default_ncv(k, b, m, n), k + b)
    storage = config.basis_dtype
    if config.max_memory is not None:
        storage = storage_for_budget(config.max_memory, ncv, b, B, m, n, op.dtype, storage)
        ncv = fit_ncv(config.max_memory, ncv, k, b, B, m, n, op.dtype, storage)
    # Products run in the network's dtype. The bases are stored in `dt` (float64 by default, as
    # SLEPc keeps its vectors) and every sum over them runs in float64 (`ct`): with float32 sums
    # over 64^3 vectors the reported residual (9e-5) was below the measured one (2.4e-4).
    dt, ct, dev = getattr(torch, storage), torch.float64, op.device
    gen = torch.Generator().manual_seed(config.seed)
    before_p, before_n = op.n_products, op.n_passes

    cap = ncv + b
    Vt = torch.zeros(B, cap, n, dtype=dt, device=dev)  # rows: V, then the pending block
    Ut = torch.zeros(B, cap, m, dtype=dt, device=dev)
    Bm = torch.zeros(B, cap, cap, dtype=ct, device=dev)  # U^T A V, kept up to date
    p = q = 0  # vectors in V and U
    L = 0  # locked triplets: rows :L of both bases, frozen since their restart
    S_lock = torch.zeros(B, 0, dtype=ct, device=dev)  # their values and absolute residuals
    R_lock = torch.zeros(B, 0, dtype=ct, device=dev)
    start = torch.randn(B, b, n, generator=gen, dtype=ct).to(dev)
    bv = min(b, n)
    Vt[:, :bv] = orthonormalize(start, Vt[:, :0], bv, gen)[0]
    E = torch.zeros(B, bv, 0, dtype=ct, device=dev)  # (I - VV^T) A^T U = P E
    reason = "max_iter"
    # rounding of a product (or of the bases, when coarser), relative to |A|
    floor = 8 * max(torch.finfo(op.dtype).eps, torch.finfo(dt).eps)

    # the adjoint pass reads the new left block from the basis, unless the basis is coarser
    # than the products (float32 bases, float64 network), where it needs the float64 block
    from_basis = dt == ct or op.dtype.itemsize <= dt.itemsize

    for step in range(1, config.max_iter + 1):
        # No block outlives its use: every pass runs with only the bases and the recording live.
        W = _apply(op, Vt[:, p : p + bv], adjoint=False)  # (B, bv, m)
        bu = min(b, m - q)
        Q, C1, R = orthonormalize(W, Ut[:, :q], bu, gen, local=b)
        del W  # (overwritten: it may be Q's storage)
        Bm[:, :q, p : p + bv] = C1
        Bm[:, q : q + bu, :p] = 0
        Bm[:, q : q + bu, p : p + bv] = R
        p += bv
        rows = Ut[:, q : q + bu] if from_basis else Q
        Ut[:, q : q + bu] = Q
        del Q
        q += bu
        Zq = _apply(op, rows, adjoint=True) if bu > 0 else None  # (B, bu, n)
        del rows
        bv = min(b, n - p)
        E = torch.zeros(B, bv, q, dtype=ct, device=dev)
        if bv > 0:
            had = Zq is not None
            if Zq is not None:
                src, Zq = Zq, None
            else:
                src = torch.randn(B, b, n, generator=gen, dtype=ct).to(dev)
            P, _, Cp = orthonormalize(src, Vt[:, :p], bv, gen, local=b)
            del src
            Vt[:, p : p + bv] = P
            del P
            if had:
                E[..., q - bu : q] = Cp
        ritz = _Ritz.of(Bm, E, L, p, q, S_lock, R_lock)
        kk = min(k, ritz.S.shape[-1])
        est = _relative(ritz.R[..., :kk], ritz.S[..., :kk], floor)
        if bv == 0:
            reason = "exhausted"
            break
        if stop is not None and kk == k:  # before the tol test: the rule sees the last step
            spent = (op.n_products - before_p) // B
            if stop(ritz.state(step, est, spent, Vt[:, :p], k)):
                reason = "callback"
                break
        if kk == k and bool((est <= tol).all()):
            reason = "tol"
            break
        if p + bv > ncv:  # thick restart: keep the best Ritz vectors, in place
            keep = restart_keep(k, ncv, b, L + ritz.S_act.shape[-1])
            ka = keep - L  # unlocked vectors kept
            Xl, Yl = ritz.X[..., :ka], ritz.Y[..., :ka]
            pending = Vt[:, p : p + bv].clone()
            coupling = Bm[:, :L, L:p] @ Yl  # U_L^T A V_active after the rotation
            rotate(Vt[:, L:], Yl, p - L)
            rotate(Ut[:, L:], Xl, q - L)
            Vt[:, keep : keep + bv] = pending
            Bm[:, L:keep, :keep] = 0
            Bm[:, L:keep, L:keep] = torch.diag_embed(ritz.S_act[..., :ka])
            Bm[:, :L, L:keep] = coupling
            E = torch.zeros(B, bv, keep, dtype=ct, device=dev)
            E[..., L:keep] = ritz.EX[..., :ka]
            new = _lockable(ritz, tol, floor, k - L) if config.lock else 0
            if new:  # their residuals are frozen: drop them from E (deflation)
                S_lock = torch.cat([S_lock, ritz.S_act[..., :new]], -1)
                R_lock = torch.cat([R_lock, ritz.R_act[..., :new]], -1)
                E[..., L : L + new] = 0
                L += new
            p = q = keep
            ritz = _Ritz.of(Bm, E, L, p, q, S_lock, R_lock)

    kk = min(k, ritz.S.shape[-1])  # max_iter may stop before k Ritz values exist
    # The shorter result first, its basis freed before the longer one is made: the peak is
    # then V + U_k + V_k instead of U + V + V_k.
    Uk = combine(ritz.left()[..., :kk].mT, Ut[:, :q])
    del Ut
    Vk = combine(ritz.right()[..., :kk].mT, Vt[:, :p])
    del Vt
    Sk = ritz.S[..., :kk].clone()
    residuals = _relative(ritz.R[..., :kk], Sk, floor)
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
        n_locked=L,
    )


def _relative(r: Tensor, S: Tensor, floor: float, top: Tensor | None = None) -> Tensor:
    """Relative residuals ``sqrt(r^2 + (floor σ_1)^2) / σ``.

    ``r`` is exact arithmetic; a product in the operator's dtype is only exact to about
    ``eps |A|``, so ``floor σ_1`` (σ_1 ≈ |A|, ``top`` when given, else ``S[..., :1]``) is added
    in quadrature: a singular value at rounding level (beyond the numerical rank) is then never
    reported as converged.
    """
    if top is None:
        top = S[..., :1] if S.shape[-1] else S.new_zeros(S.shape[0], 1)
    return torch.hypot(r, floor * top) / S.clamp_min(torch.finfo(S.dtype).tiny)


@dataclass(frozen=True)
class _Ritz:
    """A step's Ritz triplets: the ``L`` locked ones (frozen) and those of the unlocked
    projected matrix ``B_AA = U_A^T A V_A``, merged in descending order.

    For an unlocked triplet ``(σ, u = U_A x, v = V_A y)`` both residuals are known without a
    product: ``A^T u - σ v = P (E x)`` (the pending block) and ``A v - σ u = U_L (B_LA y)``,
    the coupling to the locked left vectors (``U_A^T A V_L = 0``: every locked ``v`` satisfies
    ``A v = σ u`` exactly). ``R`` holds ``sqrt(|E x|^2 + |B_LA y|^2)``; for a locked triplet,
    whose vectors no longer change, the value recorded when it was locked.
    """

    S: Tensor  # (B, r) every Ritz value, descending
    R: Tensor  # (B, r) their absolute residuals
    order: Tensor  # (B, r) position in [locked..., unlocked...] of each merged triplet
    L: int
    X: Tensor  # (B, q - L, ra) left singular vectors of B_AA
    Y: Tensor  # (B, p - L, ra) right singular vectors of B_AA
    S_act: Tensor  # (B, ra)
    R_act: Tensor  # (B, ra)
    EX: Tensor  # (B, bv, ra) pending-block coefficients of A^T u - σ v
    AX: Tensor  # (B, L, ra) locked-left coefficients of A v - σ u

    @staticmethod
    def of(Bm: Tensor, E: Tensor, L: int, p: int, q: int, S_lock: Tensor, R_lock: Tensor) -> _Ritz:
        X, S, Yh = torch.linalg.svd(Bm[:, L:q, L:p], full_matrices=False)
        Y = Yh.mT
        EX = E[..., L:q] @ X
        AX = Bm[:, :L, L:p] @ Y
        R = (EX.pow(2).sum(1) + AX.pow(2).sum(1)).sqrt()
        S_all, R_all = torch.cat([S_lock, S], -1), torch.cat([R_lock, R], -1)
        order = torch.argsort(S_all, dim=-1, descending=True, stable=True)
        return _Ritz(S_all.gather(-1, order), R_all.gather(-1, order), order, L, X, Y, S, R, EX, AX)

    def _coefficients(self, act: Tensor) -> Tensor:
        """The merged triplets' coefficients in a basis: ``blockdiag(I_L, act)``, reordered."""
        B, rows, ra = act.shape
        L = self.L
        full = act.new_zeros(B, L + rows, L + ra)
        full[:, :L, :L] = torch.eye(L, dtype=act.dtype, device=act.device)
        full[:, L:, L:] = act
        return full.gather(-1, self.order.unsqueeze(1).expand(B, L + rows, L + ra))

    def left(self) -> Tensor:
        """``(B, q, r)``: the merged left Ritz vectors are ``U^T`` times these columns."""
        return self._coefficients(self.X)

    def right(self) -> Tensor:
        """``(B, p, r)``: the merged right Ritz vectors are ``V^T`` times these columns."""
        return self._coefficients(self.Y)

    def top_residual_norm(self, k: int) -> Tensor:
        """An upper bound of the spectral norm of the top-k residual block (exact when nothing
        is locked): ``|[M_L, M_A]|_2^2 <= |M_L|_F^2 + |M_A|_2^2``."""
        pos = torch.argsort(self.order, dim=-1)  # merged position of [locked..., unlocked...]
        L = self.L
        locked = (self.R.gather(-1, pos[:, :L]).pow(2) * (pos[:, :L] < k)).sum(-1)
        block = torch.cat([self.EX, self.AX], 1) * (pos[:, L:] < k).unsqueeze(1)
        if block.shape[1] == 0 or block.shape[2] == 0:
            return locked.sqrt()
        return (locked + torch.linalg.matrix_norm(block, ord=2).pow(2)).sqrt()

    def state(self, step: int, est: Tensor, spent: int, V: Tensor, k: int) -> LanczosState:
        """The :class:`LanczosState` of a step (small matrices only: no pass over the bases)."""
        S, R = self.S, self.R
        B = S.shape[0]
        if S.shape[-1] > k:
            nxt, nres = S[..., k], R[..., k]
        else:
            nxt, nres = S.new_zeros(B), S.new_full((B,), float("inf"))
        rnorm = self.top_residual_norm(k)
        return LanczosState(
            step,
            S[..., :k],
            est,
            spent,
            nxt,
            nres,
            rnorm,
            S[..., k:],
            R[..., k:],
            V,
            self.right(),
            self.L,
            self.order < self.L if self.L else None,
        )


def _lockable(ritz: _Ritz, tol: float, floor: float, room: int) -> int:
    """How many leading unlocked triplets have met ``tol`` in every sample (at most ``room``)."""
    if room <= 0 or ritz.S_act.shape[-1] == 0:
        return 0
    rel = _relative(ritz.R_act, ritz.S_act, floor, top=ritz.S[..., :1])
    lead = (rel <= tol).to(torch.int64).cumprod(-1).sum(-1)
    return int(min(int(lead.min().item()), room))


def _apply(op: LinearOperator, rows: Tensor, *, adjoint: bool) -> Tensor:
    """``A`` or ``A^T`` on a ``(B, c, N)`` block of row vectors, returning ``(B, c, M)``."""
    B, c, _ = rows.shape
    shape = op.out_shape if adjoint else op.in_shape
    out = op.apply(rows.reshape(B, c, *shape).to(op.dtype), adjoint=adjoint)
    return out.reshape(B, c, -1).to(torch.float64)
