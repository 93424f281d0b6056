"""The public operator contract: every solver reaches A[x] through ``op.apply`` only, which
checks shapes and counts products and passes; ``unbatched()`` is a view, not a flipped flag."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import rprselect
from rprselect.operator import LinearOperator
from rprselect.solvers import SolverConfig
from rprselect.solvers.slepc import import_slepc


class Guarded(LinearOperator):
    """A dense matrix whose kernels refuse to run unless called from ``apply``."""

    def __init__(self, A: Tensor) -> None:
        super().__init__((A.shape[2],), (A.shape[1],), batch=A.shape[0], dtype=A.dtype)
        self.A, self.inside, self.kernel_calls = A, False, 0

    def apply(self, block: Tensor, *, adjoint: bool = False) -> Tensor:
        self.inside = True
        try:
            return super().apply(block, adjoint=adjoint)
        finally:
            self.inside = False

    def _matmat(self, Y: Tensor) -> Tensor:
        assert self.inside, "a kernel was called around apply()"
        self.kernel_calls += 1
        return torch.einsum("bmn,bkn->bkm", self.A, Y)

    def _rmatmat(self, Z: Tensor) -> Tensor:
        assert self.inside, "a kernel was called around apply()"
        self.kernel_calls += 1
        return torch.einsum("bmn,bkm->bkn", self.A, Z)


def _solvers() -> list[str]:
    names = ["dense", "lanczos"]
    try:
        import_slepc()
        names.append("slepc")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("solver", _solvers())
def test_every_solver_goes_through_apply(solver: str) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 12, 30, generator=g, dtype=torch.float64)
    op = Guarded(A)
    res = rprselect.svd_batch(op, k=3, tol=1e-10, solver=solver, config=SolverConfig(seed=1))
    S = torch.linalg.svdvals(A)[:, :3]
    torch.testing.assert_close(res.S.double(), S, rtol=1e-8, atol=0)
    assert op.kernel_calls >= 1
    if solver != "slepc":  # apply() counted every pass the solver made, and nothing else
        assert op.n_passes == res.n_passes and op.n_products == res.n_products * 2


def test_apply_checks_shapes_and_counts() -> None:
    op = Guarded(torch.randn(3, 4, 5, dtype=torch.float64))
    out = op.apply(torch.ones(3, 2, 5, dtype=torch.float64))
    assert out.shape == (3, 2, 4) and (op.n_products, op.n_passes) == (6, 1)
    op.apply(torch.ones(3, 1, 4, dtype=torch.float64), adjoint=True)
    assert (op.n_products, op.n_passes) == (9, 2)
    with pytest.raises(ValueError, match=r"Y must have shape \(3, b, 5\), got \(2, 2, 5\)"):
        op.apply(torch.ones(2, 2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="Z must be a torch.Tensor"):
        op.apply([[0.0]], adjoint=True)  # type: ignore[arg-type]


def test_unbatched_is_a_view_sharing_the_recording() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)).double()
    x = torch.rand(1, 5, 5, dtype=torch.float64)
    batched = rprselect.linearize_batch(net, x[None])
    op = batched.unbatched()
    assert op.batch is None and batched.batch == 1, "the batched operator is left as it was"
    assert op.output is not None and op.output.shape == (2, 5, 5)
    torch.testing.assert_close(op.matvec(x), net(x[None])[0])
    assert op.adjoint_network is batched.adjoint_network  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="one-sample operator, got batch=2"):
        rprselect.linearize_batch(net, torch.rand(2, 1, 5, 5, dtype=torch.float64)).unbatched()
