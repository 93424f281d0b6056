"""One test class for every SVD backend (house style 7), subclassed per solver.

Each backend must return orthonormal singular vectors, descending singular values equal to
LAPACK's, residuals that match an independent recomputation, honest converged flags and
product counters that agree with the operator's own.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch
from dense_oracle import (
    Oracle,
    assert_close,
    oracle_for,
    projection_ratios,
)

import rprselect
from rprselect import (
    LinearOperator,
    NotConvergedWarning,
    SolverConfig,
    SVDResult,
    label_logits,
    linearize,
    lpr,
    rpr,
    svd,
)
from rprselect.solvers import measured_residuals


def _has_slepc() -> bool:
    try:
        rprselect.solvers.slepc.import_slepc()
    except ImportError:
        return False
    return True


HAS_SLEPC = _has_slepc()
SLEPC_REASON = "slepc4py is not installed (pip install 'rprselect[slepc]'); SLEPc checks skipped"
# wide (10 x 64, classifier), square (128 x 128, 3-D UNet), tall (128 x 12, upsampling)
SHAPES = ["mnist8", "pocket_unet3d", "upsample"]


def _op(o: Oracle) -> LinearOperator:
    return linearize(o.model, o.x, method="adjoint")


class SolverChecks:
    """The checks every backend passes; subclasses set ``solver`` and ``block``."""

    solver: ClassVar[str]
    block: ClassVar[int] = 1
    iterative: ClassVar[bool] = True

    def config(self, **changes: Any) -> SolverConfig:
        return SolverConfig(block_size=self.block, **changes)

    def solve(self, op: LinearOperator, k: int, tol: float = 1e-10, **changes: Any) -> SVDResult:
        return svd(op, k=k, tol=tol, solver=self.solver, config=self.config(**changes))  # type: ignore[arg-type]

    def expected_counts(self, res: SVDResult, m: int, n: int) -> None:
        """Backend-specific relation between products and passes."""
        raise NotImplementedError

    @pytest.mark.parametrize("name", SHAPES)
    def test_singular_values_and_vectors(self, name: str) -> None:
        o = oracle_for(name)
        k = min(6, o.rank)
        res = self.solve(_op(o), k)
        assert res.S.dtype == torch.float64 and res.S.shape == (k,)
        assert bool((res.S[:-1] >= res.S[1:]).all()), f"S not descending: {res.S}"
        assert_close(res.S, o.S[:k], rtol=1e-8, name="singular values")
        U, V = res.U.reshape(k, -1).double(), res.V.reshape(k, -1).double()
        eye = torch.eye(k, dtype=torch.float64)
        assert_close(U @ U.T, eye, rtol=0, atol=1e-10, name="U^T U")
        assert_close(V @ V.T, eye, rtol=0, atol=1e-10, name="V^T V")
        # up to sign, each pair matches LAPACK's (the zoo's leading values are well separated)
        assert_close(
            (V @ o.Vh[:k].T).abs().diagonal(), torch.ones(k), rtol=0, atol=1e-6, name="|v.v'|"
        )
        assert_close(
            (U @ o.U[:, :k]).abs().diagonal(), torch.ones(k), rtol=0, atol=1e-6, name="|u.u'|"
        )

    @pytest.mark.parametrize("name", SHAPES)
    def test_residuals_match_independent_recomputation(self, name: str) -> None:
        o = oracle_for(name)
        k = min(6, o.rank)
        res = self.solve(_op(o), k, tol=1e-6)
        mine = measured_residuals(
            o.J[None], res.U.reshape(1, k, -1), res.S[None], res.V.reshape(1, k, -1)
        )[0]
        assert_close(res.residuals, mine, rtol=1e-3, atol=1e-12, name="reported residuals")
        assert bool(res.converged.all()) and bool((mine <= 1e-6).all())
        assert torch.equal(res.converged, res.residuals <= 1e-6)
        assert res.tol == 1e-6 and res.seconds > 0

    @pytest.mark.parametrize("name", SHAPES)
    def test_counters_are_consistent(self, name: str) -> None:
        o = oracle_for(name)
        op = _op(o)
        assert op.n_products == op.n_passes == 0
        res = self.solve(op, min(4, o.rank), tol=1e-8)
        assert res.n_products > 0 and res.n_passes > 0
        assert (res.n_products, res.n_passes) == (op.n_products, op.n_passes)
        self.expected_counts(res, *op.shape)

    def test_k_equals_rank(self) -> None:
        """MNIST-like 10 logits with k = 10: U spans the logit space, so LPR(y; 10) = 1."""
        o = oracle_for("mnist8")
        assert o.rank == 10
        res = self.solve(_op(o), 10)
        assert_close(res.S, o.S, rtol=1e-8, name="all singular values")
        y = label_logits(int(o.output.argmax()), 10)
        ratios = lpr(res, y)
        assert_close(ratios, projection_ratios(o.U.T, y), rtol=0, atol=1e-8, name="LPR")
        assert abs(float(ratios[-1]) - 1.0) < 1e-10
        assert_close(rpr(res, o.x), projection_ratios(o.Vh, o.x), rtol=0, atol=1e-8, name="RPR")
        assert bool(res.converged.all())

    def test_k_beyond_rank_flags_the_zero_singular_values(self) -> None:
        """k above rank(A[x]): the nonzero triplets are exact, the rest are flagged, loudly."""
        o = oracle_for("maxpool1d3d")  # 12 x 64 of rank 9
        r, k = o.rank, o.rank + 2
        assert k <= min(o.J.shape)
        with pytest.warns(NotConvergedWarning, match="did not reach tol|miss the relative tol"):
            res = self.solve(_op(o), k, tol=1e-8)
        assert bool(res.converged[:r].all()) and not bool(res.converged[r:].any())
        assert_close(res.S[:r], o.S[:r], rtol=1e-8, name="nonzero singular values")
        assert bool((res.S[r:] <= 1e-8 * o.S[0]).all()), f"not ~0: {res.S[r:]}"
        assert_close(rpr(res, o.x)[:r], projection_ratios(o.Vh[:r], o.x), rtol=0, atol=1e-8)

    def test_not_converged_is_flagged_and_warned(self) -> None:
        if not self.iterative:
            pytest.skip(f"{self.solver} is exact: it always converges")
        o = oracle_for("pocket_unet3d")
        with pytest.warns(NotConvergedWarning, match="did not reach tol"):
            res = self.solve(_op(o), 6, tol=1e-14, **self.starved())
        assert not bool(res.converged.all())
        assert torch.equal(res.converged, res.residuals <= 1e-14)
        found = res.S > 0
        mine = measured_residuals(
            o.J[None], res.U.reshape(1, 6, -1), res.S[None], res.V.reshape(1, 6, -1)
        )[0]
        assert_close(res.residuals[found], mine[found], rtol=1e-6, atol=1e-12, name="residuals")

    def starved(self) -> dict[str, Any]:
        """Config changes that stop the solver long before convergence."""
        return {"max_iter": 2}


class TestDense(SolverChecks):
    solver = "dense"
    iterative = False

    def expected_counts(self, res: SVDResult, m: int, n: int) -> None:
        assert res.n_passes == 1 and res.n_products == min(m, n)


class TestLanczos(SolverChecks):
    solver = "lanczos"
    block = 1

    def expected_counts(self, res: SVDResult, m: int, n: int) -> None:
        assert res.n_products == res.n_passes  # one vector per pass
        assert res.n_passes >= 2 * res.k


class TestLanczosBlock(SolverChecks):
    solver = "lanczos"
    block = 4

    def expected_counts(self, res: SVDResult, m: int, n: int) -> None:
        b = self.block
        # every pass carries b vectors, except when a side of A is (nearly) exhausted
        assert res.n_products <= b * res.n_passes
        assert res.n_products >= b * res.n_passes / 2
        if min(m, n) >= 64:
            assert res.n_products == b * res.n_passes


@pytest.mark.skipif(not HAS_SLEPC, reason=SLEPC_REASON)
class TestSlepc(SolverChecks):
    solver = "slepc"

    def expected_counts(self, res: SVDResult, m: int, n: int) -> None:
        assert res.n_products == res.n_passes  # the shell matrix takes one vector at a time

    def starved(self) -> dict[str, Any]:
        return {"slepc_max_it": 1}


@pytest.mark.skipif(not HAS_SLEPC, reason=SLEPC_REASON)
@pytest.mark.parametrize("name", SHAPES)
def test_slepc_agrees_with_lanczos(name: str) -> None:
    o = oracle_for(name)
    k = min(6, o.rank)
    op = _op(o)
    a = svd(op, k=k, tol=1e-8, solver="lanczos")
    b = svd(op, k=k, tol=1e-8, solver="slepc")
    assert_close(b.S, a.S, rtol=1e-8, name="slepc vs lanczos singular values")
    overlap = (a.V.reshape(k, -1).double() @ b.V.reshape(k, -1).double().T).abs()
    assert_close(overlap, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-5, name="|V^T V'|")


def test_block_lanczos_resolves_repeated_singular_values() -> None:
    """A non-overlapping transposed convolution has exactly repeated singular values; a block
    as wide as the multiplicity finds every copy, as the dense solver does."""
    torch.manual_seed(0)
    net = torch.nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2, bias=False).double()
    x = torch.randn(2, 2, 2, dtype=torch.float64)  # each group's value 4 times: 4 x s1, 4 x s2
    op = linearize(net, x)
    exact = torch.linalg.svdvals(op.dense())
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)
        res = svd(op, k=6, tol=1e-10, solver="lanczos", config=SolverConfig(block_size=4))
    assert_close(res.S, exact[:6], rtol=1e-8, name="repeated singular values")
