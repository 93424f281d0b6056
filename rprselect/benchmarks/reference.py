"""The paper's method, kept as the baseline of ``rprselect bench solvers``.

SLEPc's ``cross`` solver (Section 1.2) on a PETSc shell matrix whose products are automatic
differentiation of the model, one vector per network pass:

.. math::
    A[x]\\,y = \\frac{d}{dt} \\mathcal{F}_\\theta(x + t y)\\big|_{t=0} \\;(\\text{JVP}), \\qquad
    A^T[x]\\,z = \\nabla_x \\langle z, \\mathcal{F}_\\theta(x) \\rangle \\;(\\text{VJP})

Each ``mult`` re-runs the model under ``torch.func.jvp`` and each ``multTranspose`` under
``torch.func.vjp``, as the paper's code did. It deliberately does not use rprselect's operator
(:func:`rprselect.linearize`), so the benchmark compares against the method as published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ReferenceSVD", "AutogradShell", "reference_svd"]


@dataclass
class ReferenceSVD:
    """Top-k triplets of A[x] from the reference solver, one sample.

    Attributes:
        U: ``(k, m)`` float64 left singular vectors (flattened output space).
        S: ``(k,)`` float64 singular values; NaN where SLEPc returned fewer than k.
        V: ``(k, n)`` float64 right singular vectors (flattened input space).
        n_converged: triplets SLEPc reports as converged.
        n_products: single-vector products (JVPs plus VJPs).
        n_passes: network passes under autograd (one per product).
        seconds: wall time of the solve, shell set-up included.
    """

    U: np.ndarray
    S: np.ndarray
    V: np.ndarray
    n_converged: int
    n_products: int
    n_passes: int
    seconds: float


class AutogradShell:
    """PETSc python-matrix context whose products are autograd JVP/VJP, one vector each.

    Args:
        model: the network, in eval mode.
        x: the sample ``(C, *spatial)`` where A[x] is taken.
    """

    def __init__(self, model: nn.Module, x: Tensor) -> None:
        # A copy: forward-mode AD allocates zero tangents shaped like the base storage of its
        # primal, so a view into a whole dataset would cost a dataset-sized fill per JVP.
        self.model, self.x = model, x.detach().clone()
        with torch.no_grad():
            out = model(x.unsqueeze(0))[0]
        self.in_shape = tuple(x.shape)
        self.out_shape = tuple(out.shape)
        self.n_products = 0

    def _f(self, t: Tensor) -> Tensor:
        return self.model(t.unsqueeze(0))[0]

    def _vec(self, pvec: Any, shape: tuple[int, ...]) -> Tensor:
        arr = pvec.getArray(readonly=True)
        return torch.from_numpy(np.array(arr)).to(self.x.device, self.x.dtype).reshape(shape)

    def mult(self, mat: Any, x: Any, y: Any) -> None:
        """``y = A x`` by one forward-mode JVP of the model."""
        v = self._vec(x, self.in_shape)
        out = torch.func.jvp(self._f, (self.x,), (v,))[1]
        self.n_products += 1
        y.setArray(out.detach().double().cpu().numpy().ravel())

    def multTranspose(self, mat: Any, x: Any, y: Any) -> None:  # noqa: N802 - PETSc's name
        """``y = A^T x`` by one VJP, re-running the model under autograd."""
        z = self._vec(x, self.out_shape)
        pullback = torch.func.vjp(self._f, self.x)[1]
        (g,) = pullback(z)
        self.n_products += 1
        y.setArray(g.detach().double().cpu().numpy().ravel())


def reference_svd(
    model: nn.Module,
    x: Tensor,
    k: int = 10,
    tol: float = 1e-4,
    *,
    seed: int = 0,
    max_it: int = 10_000,
) -> ReferenceSVD:
    """Top-k singular triplets of A[x] the way the paper computed them.

    SLEPc ``cross`` (an implicit Krylov–Schur eigensolve of :math:`A^T A`), largest singular
    values, relative convergence test (Section 1.2):

    .. math:: \\frac{\\sqrt{\\|A v - \\sigma u\\|^2 + \\|A^T u - \\sigma v\\|^2}}{\\sigma} \\le tol

    Args:
        model: the network; put in eval mode for the solve and restored afterwards.
        x: one sample ``(C, *spatial)``.
        k: number of triplets.
        tol: SLEPc relative tolerance.
        seed: seed of the initial vector (the same start as ``rprselect.svd(solver="slepc")``).
        max_it: SLEPc iteration limit.

    Returns:
        :class:`ReferenceSVD`.

    Raises:
        ImportError: without petsc4py/slepc4py, naming the extra to install.
        ValueError: for ``k`` outside ``1..min(m, n)`` or a non-positive ``tol``.
    """
    from rprselect.solvers.slepc import import_slepc

    PETSc, SLEPc = import_slepc()
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        shell = AutogradShell(model, x)
        m, n = int(np.prod(shell.out_shape)), int(np.prod(shell.in_shape))
        if not 0 < k <= min(m, n):
            raise ValueError(f"k must satisfy 0 < k <= min(m, n) = {min(m, n)}, got {k}")
        A = PETSc.Mat().createPython([[m, m], [n, n]], context=shell, comm=PETSc.COMM_SELF)
        A.setUp()
        svd = SLEPc.SVD().create(comm=PETSc.COMM_SELF)
        svd.setOperators(A)
        svd.setType("cross")
        svd.setDimensions(nsv=k)
        svd.setWhichSingularTriplets(SLEPc.SVD.Which.LARGEST)
        svd.setTolerances(tol=tol, max_it=max_it)
        svd.setConvergenceTest(SLEPc.SVD.Conv.REL)
        init = PETSc.Vec().createSeq(n, comm=PETSc.COMM_SELF)
        init.setArray(np.random.default_rng(seed).standard_normal(n))
        svd.setInitialSpace([init], [])
        svd.solve()
        nconv = int(svd.getConverged())
        S = np.full(k, np.nan)
        U, V = np.zeros((k, m)), np.zeros((k, n))
        v, u = A.createVecs()
        for i in range(min(nconv, k)):
            S[i] = svd.getSingularTriplet(i, u, v)
            U[i], V[i] = u.getArray(), v.getArray()
        seconds = time.perf_counter() - t0
        for obj in (svd, A, u, v, init):
            obj.destroy()
    finally:
        model.train(training)
    return ReferenceSVD(U, S, V, nconv, shell.n_products, shell.n_products, seconds)
