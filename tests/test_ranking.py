"""The ranking mode: RankStop's certified RPR interval against the dense float64 oracle."""

from __future__ import annotations

import pytest
import torch

import rprselect
from rprselect.models import PocketUNet
from rprselect.solvers import SolverConfig
from rprselect.solvers.lanczos import LanczosState, lanczos_svd
from rprselect.solvers.ranking import RankStop, rpr_interval


def _case(seed: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = PocketUNet(2, 2, dims=2, depth=2, filters=4).double().eval()
    return net, torch.rand(3, 2, 8, 8, dtype=torch.float64)


def _exact(net: torch.nn.Module, X: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True RPR(x; k) and σ_{k+1} from the dense Jacobian and LAPACK."""
    A = rprselect.linearize_batch(net, X).dense()  # (B, m, n)
    _, S, Vh = torch.linalg.svd(A)
    x = X.reshape(X.shape[0], -1)
    c = torch.einsum("bkn,bn->bk", Vh[:, :k], x)
    return c.pow(2).sum(-1) / x.pow(2).sum(-1), S[:, k]


@pytest.mark.parametrize("k,block", [(3, 1), (5, 2)])
def test_certified_interval_holds_the_true_rpr_at_every_step(k: int, block: int) -> None:
    net, X = _case()
    want, next_sigma = _exact(net, X, k)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(state: LanczosState) -> bool:
        c, lo, hi = rpr_interval(state, X.reshape(3, -1))
        # The bound's assumption (Ritz value k+1 plus its residual >= σ_{k+1}) can fail in the
        # first steps, while the residuals are large; it holds wherever a stop could happen.
        alpha = state.next_value + state.next_residual
        narrow = (hi - lo) < 0.1
        assert bool((alpha[narrow] >= next_sigma[narrow] * (1 - 1e-12)).all())
        seen.append((c, lo, hi))
        return False

    op = rprselect.linearize_batch(net, X)
    lanczos_svd(op, k, 1e-12, SolverConfig(block_size=block, ncv=k + 8), stop=record)
    assert len(seen) >= 3
    widths = []
    for c, lo, hi in seen:
        assert bool(((lo <= want + 1e-12) & (want <= hi + 1e-12)).all()), (lo, want, hi)
        assert bool(((lo <= c) & (c <= hi)).all())
        widths.append(float((hi - lo).max()))
    assert min(widths) < 1e-6  # the bound tightens to nothing as the triplets converge
    assert widths[0] > widths[-1]


def test_rank_stop_ends_early_within_delta() -> None:
    net, X = _case()
    k, delta = 3, 1e-2
    want, _ = _exact(net, X, k)
    op = rprselect.linearize_batch(net, X)
    full = lanczos_svd(op, k, 1e-10, SolverConfig())
    rule = RankStop(X, delta)
    res = lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-10, SolverConfig(), stop=rule)
    assert res.stop_reason == "callback"
    assert res.n_products < full.n_products
    got = rprselect.rpr(res, X)[:, -1]
    torch.testing.assert_close(got, rule.rpr, rtol=0, atol=1e-10)  # the rule saw these vectors
    assert bool(((got - want).abs() <= delta).all())
    assert bool(((rule.upper - rule.lower) <= 2 * delta).all())
    assert bool(((rule.lower <= want) & (want <= rule.upper)).all())


def test_rank_stop_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="delta must be in"):
        RankStop(torch.ones(2, 3), 0.0)
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        RankStop([1.0], 0.1)  # type: ignore[arg-type]
    net, X = _case()
    with pytest.raises(ValueError, match="one point per sample"):
        lanczos_svd(rprselect.linearize_batch(net, X), 3, 1e-10, SolverConfig(),
                    stop=RankStop(X[:2], 0.1))  # fmt: skip
