"""SLEPc backend: the paper's solver (``cross`` by default) on a PETSc shell matrix.

The shell's ``mult`` and ``multTranspose`` call the operator's ``matmat``/``rmatmat`` one vector
at a time, as the paper did. slepc4py is optional (``pip install 'rprselect[slepc]'``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ..operator import LinearOperator
from .lanczos import NotConvergedWarning
from .result import SolverConfig, SVDResult, measured_residuals

__all__ = ["slepc_svd", "import_slepc"]


def import_slepc() -> tuple[Any, Any]:
    """``(PETSc, SLEPc)``, or an ImportError naming the extra to install."""
    try:
        import slepc4py

        slepc4py.init()
        from petsc4py import PETSc
        from slepc4py import SLEPc
    except ImportError as err:
        raise ImportError(
            "solver='slepc' needs petsc4py and slepc4py: pip install 'rprselect[slepc]' "
            "(they build from source; see the README)"
        ) from err
    return PETSc, SLEPc


class _Shell:
    """PETSc python-matrix context: y = A x and y = A^T x through the operator."""

    def __init__(self, op: LinearOperator, sample: int) -> None:
        self.op, self.sample = op, sample

    def _run(self, x: Any, y: Any, forward: bool) -> None:
        op = self.op
        shape = op.in_shape if forward else op.out_shape
        B = op.n_samples
        v = torch.from_numpy(x.getArray(readonly=True).copy()).to(op.device, op.dtype)
        block = torch.zeros(B, 1, *shape, dtype=op.dtype, device=op.device)
        block[self.sample, 0] = v.reshape(shape)
        # The paper's way: one vector per pass. apply counts B products for the zero-padded
        # block of a batched operator; only this sample's one is real work, so take B - 1 back.
        out = op.apply(block, adjoint=not forward)
        op.n_products -= B - 1
        y.setArray(out[self.sample, 0].reshape(-1).detach().double().cpu().numpy())

    def mult(self, mat: Any, x: Any, y: Any) -> None:
        self._run(x, y, forward=True)

    def multTranspose(self, mat: Any, x: Any, y: Any) -> None:  # noqa: N802 - PETSc's name
        self._run(x, y, forward=False)


def _solve_one(
    op: LinearOperator, sample: int, k: int, tol: float, config: SolverConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    PETSc, SLEPc = import_slepc()
    m, n = op.shape
    A = PETSc.Mat().createPython([[m, m], [n, n]], context=_Shell(op, sample), comm=PETSc.COMM_SELF)
    A.setUp()
    solver = SLEPc.SVD().create(comm=PETSc.COMM_SELF)
    solver.setOperators(A)
    solver.setType(config.slepc_type)
    solver.setDimensions(nsv=k)
    solver.setWhichSingularTriplets(SLEPc.SVD.Which.LARGEST)
    solver.setTolerances(tol=tol, max_it=config.slepc_max_it)
    solver.setConvergenceTest(SLEPc.SVD.Conv.REL)
    init = PETSc.Vec().createSeq(n, comm=PETSc.COMM_SELF)
    init.setArray(np.random.default_rng(config.seed).standard_normal(n))
    solver.setInitialSpace([init], [])  # slepc4py 3.26 fails on spaceleft=None
    solver.solve()
    nconv = solver.getConverged()
    S = np.full(k, np.nan)
    U, V = np.zeros((k, m)), np.zeros((k, n))
    v, u = A.createVecs()  # (right: n, left: m)
    for i in range(min(nconv, k)):
        S[i] = solver.getSingularTriplet(i, u, v)
        U[i], V[i] = u.getArray(), v.getArray()
    for obj in (solver, A, u, v, init):
        obj.destroy()
    return U, S, V, nconv


def slepc_svd(op: LinearOperator, k: int, tol: float, config: SolverConfig) -> SVDResult:
    """Top-k singular triplets with SLEPc, one sample at a time."""
    before_p, before_n = op.n_products, op.n_passes
    B = op.n_samples
    Us, Ss, Vs = [], [], []
    for i in range(B):
        U, S, V, nconv = _solve_one(op, i, k, tol, config)
        Us.append(U)
        Ss.append(S)
        Vs.append(V)
    U_t = torch.from_numpy(np.stack(Us))
    S_t = torch.from_numpy(np.stack(Ss))
    V_t = torch.from_numpy(np.stack(Vs))
    found = ~torch.isnan(S_t)
    spent_p, spent_n = op.n_products - before_p, op.n_passes - before_n
    residuals = measured_residuals(op, U_t, S_t.nan_to_num(0.0), V_t)
    residuals[~found] = float("inf")
    converged = residuals <= tol
    if not bool(converged.all()):
        warnings.warn(
            f"slepc: {(~converged).sum().item()} of {converged.numel()} singular "
            f"triplets did not reach tol={tol} (see .converged)",
            NotConvergedWarning,
            stacklevel=3,
        )
    return SVDResult(
        U=U_t.to(op.dtype).reshape(B, k, *op.out_shape),
        S=S_t.nan_to_num(0.0),
        V=V_t.to(op.dtype).reshape(B, k, *op.in_shape),
        residuals=residuals,
        converged=converged,
        n_products=spent_p // B,
        n_passes=spent_n,
        solver=f"slepc({config.slepc_type})",
        tol=tol,
    )
