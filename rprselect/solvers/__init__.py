"""Truncated SVD of A[x] behind one function, one module per backend.

The package is called ``solvers`` rather than the house style's ``svd/`` because
``rprselect.svd`` is the public function: a subpackage of the same name would replace it
as an attribute of ``rprselect`` whenever one of its modules is imported.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import Tensor, nn

from ..linearize import Method, linearize, linearize_batch
from ..operator import LinearOperator
from .dense import dense_svd
from .lanczos import NotConvergedWarning, StopRule, lanczos_svd
from .result import SolverConfig, SVDResult, measured_residuals
from .slepc import slepc_svd

__all__ = [
    "svd",
    "svd_batch",
    "SVDResult",
    "SolverConfig",
    "NotConvergedWarning",
    "measured_residuals",
    "choose_solver",
]

Solver = Literal["auto", "dense", "lanczos", "slepc"]
_BACKENDS = {"dense": dense_svd, "lanczos": lanczos_svd, "slepc": slepc_svd}


def choose_solver(op: LinearOperator, k: int, config: SolverConfig) -> str:
    """``"dense"`` when the smaller side of A is small, else ``"lanczos"``.

    SLEPc is never chosen: in ``rprselect bench solvers`` on the same explicit-adjoint
    operator our Lanczos took fewer products than SLEPc ``cross`` in every case (32³ random
    162 vs 184, trained 74 vs 82; 64³ random 226 vs 242) and no more wall time, and it batches
    samples through each pass where SLEPc solves them one at a time (docs/performance.md).
    """
    m, n = op.shape
    return "dense" if min(m, n) <= max(config.dense_max, 2 * k) else "lanczos"


def _validate(op: LinearOperator, k: int, tol: float, solver: str) -> None:
    if solver not in ("auto", *_BACKENDS):
        raise ValueError(
            f"solver must be one of 'auto', 'dense', 'lanczos', 'slepc', got {solver!r}"
        )
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    r = min(op.shape)
    if not 0 < k <= r:
        raise ValueError(f"k must satisfy 0 < k <= min(m, n) = {r}, got {k}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def _run(
    op: LinearOperator,
    k: int,
    tol: float,
    solver: str,
    config: SolverConfig,
    stop: StopRule | None = None,
) -> SVDResult:
    _validate(op, k, tol, solver)
    if stop is not None and solver in ("dense", "slepc"):
        raise ValueError(
            f"stop (a Lanczos stopping rule such as RankStop) needs solver 'lanczos' or "
            f"'auto', got solver={solver!r}"
        )
    name = choose_solver(op, k, config) if solver == "auto" else solver
    t0 = time.perf_counter()
    with torch.no_grad():
        if name == "lanczos":
            result = lanczos_svd(op, k, tol, config, stop=stop)
        else:  # "auto" chose the exact dense solver: a stopping rule has nothing to stop
            result = _BACKENDS[name](op, k, tol, config)
    result.seconds = time.perf_counter() - t0
    return result


def svd(
    model_or_operator: nn.Module | LinearOperator,
    x: Tensor | None = None,
    k: int = 10,
    tol: float = 1e-4,
    solver: Solver = "auto",
    *,
    method: Method = "auto",
    config: SolverConfig | None = None,
    stop: StopRule | None = None,
) -> SVDResult:
    """Top-k singular triplets of A[x] (paper Eq. 5).

    .. math:: A[x] \\approx \\sum_{i=1}^{k} \\sigma_i u_i v_i^T

    Args:
        model_or_operator: a model (then ``x`` is required) or an operator from
            :func:`~rprselect.linearize`.
        x: one sample ``(C, *spatial)`` when a model is given.
        k: number of triplets, ``0 < k <= min(m, n)``.
        tol: relative residual tolerance, ``sqrt(|Av-su|^2+|A^T u-sv|^2)/s <= tol``.
        solver: ``"dense"`` (exact, LAPACK), ``"lanczos"`` (torch, any device),
            ``"slepc"`` (the paper's SLEPc ``cross``), or ``"auto"``: dense when
            ``min(m, n)`` is small, else lanczos.
        method: how to linearise a model, see :func:`~rprselect.linearize`.
        config: solver knobs (:class:`SolverConfig`).
        stop: a Lanczos stopping rule, e.g. :class:`~rprselect.solvers.ranking.RankStop`
            for the ranking mode (see :func:`~rprselect.solvers.lanczos.lanczos_svd`); only
            with ``solver="lanczos"`` or ``"auto"`` (when auto picks the exact dense solver
            the rule is not needed and not called).

    Returns:
        :class:`SVDResult` with ``U (k, *out_shape)``, ``S (k,)``, ``V (k, *in_shape)``,
        residuals, converged flags and the products spent. Triplets that miss the tolerance
        are flagged in ``converged`` with a :class:`NotConvergedWarning`.

    Raises:
        ValueError: bad k, tol or solver name; bad x (see :func:`~rprselect.linearize`).
        ImportError: ``solver="slepc"`` without slepc4py, naming the extra to install.
    """
    config = config or SolverConfig()
    if isinstance(model_or_operator, LinearOperator):
        if x is not None:
            raise ValueError("x must be None when an operator is given (it is already at x)")
        op = model_or_operator
    elif isinstance(model_or_operator, nn.Module):
        if x is None:
            raise ValueError("x is required when a model is given")
        op = linearize(model_or_operator, x, method)
    else:
        raise TypeError(
            f"model_or_operator must be an nn.Module or a LinearOperator, got "
            f"{type(model_or_operator).__name__}"
        )
    result = _run(op, k, tol, solver, config, stop)
    if op.batch is None:
        result = result[0] if result.batched else result
    return result


def svd_batch(
    model_or_operator: nn.Module | LinearOperator,
    X: Tensor | None = None,
    k: int = 10,
    tol: float = 1e-4,
    solver: Solver = "auto",
    *,
    method: Method = "auto",
    config: SolverConfig | None = None,
    stop: StopRule | None = None,
) -> SVDResult:
    """:func:`svd` for ``B`` samples at once; every field gains a leading ``B``.

    Dense and Lanczos send all samples through each network pass together; SLEPc solves them
    one after another. ``stop`` is as in :func:`svd` (a rule for all ``B`` samples at once).
    """
    config = config or SolverConfig()
    if isinstance(model_or_operator, LinearOperator):
        op = model_or_operator
        if op.batch is None:
            raise ValueError("svd_batch needs a batched operator (from linearize_batch)")
    else:
        if X is None:
            raise ValueError("X is required when a model is given")
        op = linearize_batch(model_or_operator, X, method)
    return _run(op, k, tol, solver, config, stop)
