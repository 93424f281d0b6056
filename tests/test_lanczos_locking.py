"""Locking of converged Ritz triplets in the thick-restart Lanczos (``SolverConfig.lock``).

A matrix with a known SVD (fast decay at the top, a flat tail) forces restarts with a small
basis, so that the leading triplets converge and get locked while the rest iterate. Checked:
the locked vectors stop changing, every reported residual equals the residual measured with
explicit products in float64, and the answer matches LAPACK as closely as without locking.
"""

import dataclasses

import torch
from torch import Tensor

from rprselect.operator import LinearOperator
from rprselect.solvers import SolverConfig
from rprselect.solvers.lanczos import LanczosState, lanczos_svd
from rprselect.solvers.result import measured_residuals


class Matrix(LinearOperator):
    """A batch of dense matrices ``(B, m, n)`` behind the operator contract."""

    def __init__(self, A: Tensor) -> None:
        B, m, n = A.shape
        super().__init__((n,), (m,), batch=B, dtype=A.dtype)
        self.A = A

    def _matmat(self, Y: Tensor) -> Tensor:  # (B, b, n) -> (B, b, m)
        return Y @ self.A.mT

    def _rmatmat(self, Z: Tensor) -> Tensor:
        return Z @ self.A


def _matrices(B: int = 2, m: int = 120, n: int = 200, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(B):
        U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        s = torch.cat([10.0 * 0.6 ** torch.arange(6.0), 0.5 - 0.002 * torch.arange(m - 6.0)])
        s = s.double() * (1 + 0.1 * i)
        out.append(U @ torch.diag(s) @ V[:, :m].T)
    return torch.stack(out)


def _solve(A: Tensor, lock: bool, seen: list[LanczosState] | None = None):
    config = SolverConfig(ncv=16, lock=lock, max_iter=400)

    def record(state: LanczosState) -> bool:
        if seen is not None:
            # the state's basis is a view of the solver's buffer: keep a copy
            seen.append(dataclasses.replace(state, _V=state._V.clone(), _Y=state._Y.clone()))
        return False

    return lanczos_svd(Matrix(A), 8, 1e-10, config, stop=record)


def test_locking_freezes_the_converged_triplets_and_keeps_the_answer() -> None:
    A = _matrices()
    seen: list[LanczosState] = []
    got = _solve(A, lock=True, seen=seen)
    plain = _solve(A, lock=False)
    assert got.n_locked >= 4, got.n_locked  # the fast-decaying top converges first
    assert plain.n_locked == 0
    assert bool(got.converged.all()) and bool(plain.converged.all())
    want = torch.linalg.svdvals(A)[:, :8]
    assert torch.allclose(got.S, want, rtol=1e-9, atol=0)
    assert torch.allclose(plain.S, want, rtol=1e-9, atol=0)
    # a locked right vector never changes after the restart that locked it
    first = next(i for i, s in enumerate(seen) if s.locked > 0)
    L = seen[first].locked
    frozen = seen[first].right_vectors(L)
    for s in seen[first:]:
        assert torch.equal(s.right_vectors(L), frozen)
    # the locked vectors are the top singular vectors (up to sign)
    Vt = torch.linalg.svd(A)[2][:, :L]  # (B, L, n)
    cos = (frozen.mT * Vt).sum(-1).abs()
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-9)


def test_reported_residuals_are_the_measured_ones_with_locked_triplets() -> None:
    A = _matrices(seed=1)
    res = lanczos_svd(Matrix(A), 8, 1e-6, SolverConfig(ncv=16, max_iter=400))
    assert res.n_locked > 0
    U = res.U.reshape(A.shape[0], 8, -1)
    V = res.V.reshape(A.shape[0], 8, -1)
    measured = measured_residuals(A, U, res.S, V)
    # exact arithmetic on both sides; what separates them is float64 rounding
    assert torch.allclose(res.residuals, measured, rtol=1e-3, atol=1e-12)
    assert bool((measured <= 1e-6).all())


def test_locking_keeps_the_state_bounds_valid() -> None:
    """At every step, locked or not: the Ritz values stay below the true ones (up to the locked
    residuals) and Wedin's sin-θ bound with the state's residual norm holds against the true
    top-k right singular subspace (an underestimated residual norm would break it)."""
    A = _matrices(B=1, seed=2)
    seen: list[LanczosState] = []
    _solve(A, lock=True, seen=seen)
    assert max(s.locked for s in seen) > 0
    sv = torch.linalg.svdvals(A)
    Vtrue = torch.linalg.svd(A)[2][:, :8].mT  # (1, n, 8)
    checked = 0
    for s in seen:
        assert bool((s.values <= sv[:, :8] * (1 + 1e-9)).all())
        gap = s.values[:, -1] - sv[:, 8]
        if float(gap) <= 0:
            continue
        Vk = s.right_vectors()  # (1, n, 8)
        sin = torch.linalg.matrix_norm(Vk - Vtrue @ (Vtrue.mT @ Vk), ord=2)
        assert float(sin) <= float(s.residual_norm / gap) * (1 + 1e-6) + 1e-12
        checked += 1
    assert checked >= 5
