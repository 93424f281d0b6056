"""The shared vocabulary of every SVD backend: its configuration and its result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..operator import LinearOperator

__all__ = ["SolverConfig", "SVDResult", "measured_residuals"]


@dataclass(frozen=True)
class SolverConfig:
    """Solver knobs, in one place (house style: no seventeen arguments).

    Attributes:
        block_size: vectors sent through the network per Lanczos pass (1 = plain
            Golub–Kahan–Lanczos; 4–16 = block variant).
        ncv: largest Lanczos basis before a thick restart; ``None`` picks
            ``max(2k + 2b, k + 16)`` capped by the matrix size.
        max_iter: most Lanczos block steps (each is one A pass and one Aᵀ pass).
        seed: seed of the random start and fill vectors.
        dense_max: ``solver="auto"`` uses the exact dense path when ``min(m, n)`` is at most this.
        slepc_type: SLEPc SVD type; the paper uses ``"cross"``.
        slepc_max_it: SLEPc iteration limit.
        max_memory: a memory budget for the Lanczos solve, bytes or a string such as
            ``"8GB"``: a float32 network's bases are first stored in float32 (sums stay
            float64; same answer to the products' rounding), then ``ncv`` is lowered (more
            products, same answer) until the bases fit,
            and a ``ValueError`` names the shortfall when even ``k + b + 1`` vectors do not.
            The sliding-window engine plans windows per pass with
            :func:`~rprselect.solvers.memory.plan_memory` under the same budget.
        basis_dtype: ``"float64"`` (the default) or ``"float32"``, how the Lanczos bases are
            stored; every sum over them runs in float64 either way (float32 slabs are upcast
            as they are read). float32 halves the bases' memory (at 64³ in `bench solvers`: peak
            2.4-2.6x a forward pass instead of 3.4-4.4x) for 2-5 % more wall time, with the
            same products and residuals within the network's float32 rounding. Under
            ``max_memory`` a float32 network gets it when float64 bases do not fit, and the
            sliding-window memory plan picks it only when float64 bases cannot fit the budget.
        lock: at a thick restart, freeze the leading Ritz triplets that have met ``tol``
            (Lanczos only): their vectors stay as they are, their residuals are recorded, and
            later steps solve only the projected matrix of the unlocked part.
    """

    block_size: int = 1
    ncv: int | None = None
    max_iter: int = 1000
    seed: int = 0
    dense_max: int = 64
    slepc_type: str = "cross"
    slepc_max_it: int = 10_000
    max_memory: int | str | None = None
    basis_dtype: str = "float64"
    lock: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.lock, bool):
            raise TypeError(f"lock must be a bool, got {type(self.lock).__name__}")
        if self.basis_dtype not in ("float64", "float32"):
            raise ValueError(
                f"basis_dtype must be 'float64' or 'float32', got {self.basis_dtype!r}"
            )
        if self.max_memory is not None:
            from .memory import parse_memory

            parse_memory(self.max_memory)
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.ncv is not None and self.ncv < 2:
            raise ValueError(f"ncv must be >= 2, got {self.ncv}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def replace(self, **changes: object) -> SolverConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class SVDResult:
    """Top-k singular triplets of A[x] (or of ``B`` samples' A[x_i], with a leading ``B``).

    Attributes:
        U: left singular vectors, ``(k, *out_shape)``.
        S: singular values, ``(k,)``, descending.
        V: right singular vectors, ``(k, *in_shape)``.
        residuals: ``sqrt(|Av - s u|^2 + |A^T u - s v|^2) / s`` per triplet, as SLEPc measures.
        converged: whether each residual is within the tolerance.
        n_products: single-vector products ``Ay`` or ``A^T z`` spent, per sample.
        n_passes: batched network passes spent.
        solver: the backend that produced it.
        tol: the relative tolerance asked for.
        seconds: wall time of the solve.
        stop_reason: why the solver stopped: ``"tol"`` (every residual within ``tol``),
            ``"max_iter"``, ``"exhausted"`` (the Krylov space filled the matrix) or
            ``"callback"`` (a ``stop`` rule of :func:`~rprselect.solvers.lanczos.lanczos_svd`).
    """

    U: Tensor
    S: Tensor
    V: Tensor
    residuals: Tensor
    converged: Tensor
    n_products: int
    n_passes: int
    solver: str
    tol: float
    seconds: float = 0.0
    stop_reason: str = "tol"
    n_locked: int = 0

    @property
    def k(self) -> int:
        return int(self.S.shape[-1])

    @property
    def batched(self) -> bool:
        return self.S.dim() == 2

    def __getitem__(self, i: int) -> SVDResult:
        """Sample ``i`` of a batched result."""
        if not self.batched:
            raise TypeError("indexing needs a batched SVDResult (from svd_batch)")
        return dataclasses.replace(
            self,
            U=self.U[i],
            S=self.S[i],
            V=self.V[i],
            residuals=self.residuals[i],
            converged=self.converged[i],
        )


def measured_residuals(A: Tensor | LinearOperator, U: Tensor, S: Tensor, V: Tensor) -> Tensor:
    """Residuals recomputed from scratch, independently of any solver's bookkeeping.

    Args:
        A: a dense ``(B, m, n)`` matrix or a batched operator.
        U: ``(B, k, m)`` flattened left vectors. V: ``(B, k, n)``. S: ``(B, k)``.

    Returns:
        ``(B, k)`` relative residuals in float64.
    """
    if isinstance(A, Tensor):
        Av = torch.einsum("bmn,bkn->bkm", A.double(), V.double())
        Atu = torch.einsum("bmn,bkm->bkn", A.double(), U.double())
    else:  # a check, not solver work: the operator's counters are left as they were
        B, k = S.shape
        counts = A.n_products, A.n_passes
        Av = A.apply(V.reshape(B, k, *A.in_shape)).reshape(B, k, -1).double()
        Atu = A.apply(U.reshape(B, k, *A.out_shape), adjoint=True).reshape(B, k, -1).double()
        A.n_products, A.n_passes = counts
    s = S.double().unsqueeze(-1)
    r1 = (Av - s * U.double()).norm(dim=-1)
    r2 = (Atu - s * V.double()).norm(dim=-1)
    return torch.sqrt(r1**2 + r2**2) / S.double().clamp_min(torch.finfo(torch.float64).tiny)
