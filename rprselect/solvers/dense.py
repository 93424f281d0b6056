"""Exact SVD: materialise A[x] from its smaller side, then LAPACK.

One batched pass of ``min(m, n)`` vectors per sample builds the matrix; ``torch.linalg.svd``
in float64 does the rest, and the vectors stay in float64 (orthonormal to ~1e-15 even for a
float32 network, so LPR at full rank is 1 to rounding). For MNIST (m = 10) this is ten
products per image, and a whole batch of images shares each pass.
"""

from __future__ import annotations

import warnings

import torch

from ..operator import LinearOperator
from .lanczos import NotConvergedWarning
from .result import SolverConfig, SVDResult, measured_residuals

__all__ = ["dense_svd"]


def dense_svd(op: LinearOperator, k: int, tol: float, config: SolverConfig) -> SVDResult:
    """Top-k exact singular triplets of every sample's A[x] (batched layout)."""
    before_p, before_n = op.n_products, op.n_passes
    A = op.dense()
    if op.batch is None:
        A = A.unsqueeze(0)
    A64 = A.double()
    U, S, Vh = torch.linalg.svd(A64, full_matrices=False)
    U, S, V = U[..., :k].transpose(1, 2), S[..., :k], Vh[:, :k]
    residuals = measured_residuals(A64, U, S, V)
    B = A.shape[0]
    converged = residuals <= tol
    if not bool(converged.all()):  # exact: only singular values near 0 miss a *relative* tol
        warnings.warn(
            f"dense: {(~converged).sum().item()} of {converged.numel()} singular triplets miss "
            f"the relative tol={tol}; for an exact solve this means singular values near 0 "
            "(k exceeds the numerical rank of A[x]); see .converged",
            NotConvergedWarning,
            stacklevel=3,
        )
    return SVDResult(
        U=U.reshape(B, k, *op.out_shape),  # float64: LAPACK computed them so
        S=S,
        V=V.reshape(B, k, *op.in_shape),
        residuals=residuals,
        converged=converged,
        n_products=(op.n_products - before_p) // B,
        n_passes=op.n_passes - before_n,
        solver="dense",
        tol=tol,
    )
