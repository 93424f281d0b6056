"""The ranking mode: RankStop's certified RPR interval against the dense float64 oracle.

Every step of a small bias-free network's solve is checked: the true RPR (dense Jacobian,
LAPACK) lies in the interval, and each lemma the interval rests on holds numerically.
"""

from __future__ import annotations

import pytest
import torch

import rprselect
from rprselect.models import PocketUNet
from rprselect.solvers import SolverConfig
from rprselect.solvers.lanczos import LanczosState, lanczos_svd
from rprselect.solvers.ranking import RankStop, _gram_residuals, rpr_interval, sigma_next_bound


def _case(seed: int = 1) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = PocketUNet(2, 2, dims=2, depth=2, filters=4).double().eval()
    return net, torch.rand(3, 2, 8, 8, dtype=torch.float64)


def _exact(net: torch.nn.Module, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and right singular vectors (rows) of the dense Jacobian, by LAPACK."""
    _, S, Vh = torch.linalg.svd(_dense(net, X))
    return S, Vh


def _dense(net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The dense float64 Jacobians ``(B, m, n)`` by ``torch.func.jacrev`` of the network itself
    (bias-free ReLU network: the Jacobian at x is A[x]), checked against the operator."""
    jac = torch.func.vmap(torch.func.jacrev(lambda z: net(z.unsqueeze(0))[0]))(X)
    A = jac.reshape(X.shape[0], -1, X[0].numel())
    torch.testing.assert_close(A, rprselect.linearize_batch(net, X).dense(), rtol=1e-10, atol=1e-12)
    return A


def _rpr(Vh: torch.Tensor, X: torch.Tensor, k: int) -> torch.Tensor:
    x = X.reshape(X.shape[0], -1)
    c = torch.einsum("bkn,bn->bk", Vh[:, :k], x)
    return c.pow(2).sum(-1) / x.pow(2).sum(-1)


def _old_half(state: LanczosState, x: torch.Tensor) -> torch.Tensor:
    """The previous certificate: Wedin with σ̃_{k+1} + r_{k+1}, then s² + 2s√(c(1-c))."""
    c = state.coefficients(x).pow(2).sum(-1) / x.pow(2).sum(-1)
    gap = state.values[:, -1] - (state.next_value + state.next_residual)
    s = torch.where(gap > 0, state.residual_norm / gap.clamp_min(1e-300), torch.inf).clamp(max=1)
    return (s.pow(2) + 2 * s * (c * (1 - c)).sqrt()).clamp(max=1)


@pytest.mark.parametrize("k,block,lock", [(3, 1, False), (5, 2, False), (3, 1, True)])
def test_certified_interval_holds_the_true_rpr_at_every_step(
    k: int, block: int, lock: bool
) -> None:
    net, X = _case()
    S_true, Vh = _exact(net, X)
    A = _dense(net, X)
    want, x = _rpr(Vh, X, k), X.reshape(3, -1)
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    locked, assumption = [], []

    def record(state: LanczosState) -> bool:
        c, lo, hi = rpr_interval(state, x)
        omega = sigma_next_bound(state)
        holds = omega >= S_true[:, k] * (1 - 1e-12)  # assumption (A)
        certified = holds & ((hi - lo) < 1)
        assumption.append(holds)
        # Lemma (step 2): |AᵀA v_i − σ̃_i² v_i| <= the bound (locked triplets included), and
        # the per-column sin θ, |W⊥ᵀ v_i| <= τ_i.
        Vk = state.right_vectors()  # (B, n, k)
        vals = state.values
        gram = _gram_residuals(state)
        true_r = (A.mT @ (A @ Vk) - Vk * vals.unsqueeze(1).pow(2)).norm(dim=1)
        assert bool((true_r <= gram * (1 + 1e-9) + 1e-13).all()), (true_r, gram)
        if bool(certified.any()):
            tau = gram / (vals.pow(2) - omega[:, None].pow(2))
            col = (Vh[:, k:] @ Vk).norm(dim=1)  # |W⊥ᵀ v_i|
            assert bool((col[certified] <= tau[certified] * (1 + 1e-9) + 1e-12).all())
        # Never wider than the previous certificate.
        half = torch.maximum(c - lo, hi - c)
        assert bool((half <= _old_half(state, x) + 1e-12).all())
        seen.append((c, lo, hi))
        locked.append(state.locked)
        return False

    op = rprselect.linearize_batch(net, X)
    cfg = SolverConfig(block_size=block, ncv=k + 8, lock=lock)  # locking happens at restarts
    lanczos_svd(op, k, 1e-12, cfg, stop=record)
    assert len(seen) >= 3
    widths = []
    for (c, lo, hi), holds in zip(seen, assumption, strict=True):
        # the interval is a proof under (A): where (A) holds it must hold the true RPR
        inside = (lo <= want + 1e-12) & (want <= hi + 1e-12)
        assert bool(inside[holds].all()), (lo, want, hi)
        assert bool(((lo <= c) & (c <= hi)).all())
        widths.append(float((hi - lo).max()))
    assert min(widths) < 1e-6  # the bound tightens to nothing as the triplets converge
    assert widths[0] > widths[-1]
    assert bool(torch.stack(assumption[-5:]).all()), "(A) holds once the triplets converge"
    if lock:
        assert max(locked) > 0, "the locked branch was exercised"


def test_x_weighting_narrows_the_interval() -> None:
    """The x-weighted interval is never wider than the previous one, and at some step less than
    half as wide (the weights |c_i| discount the unconverged triplets)."""
    net, X = _case()
    k = 3
    widths: dict[str, list[float]] = {"new": [], "old": []}
    x = X.reshape(3, -1)

    def record(state: LanczosState) -> bool:
        c, lo, hi = rpr_interval(state, x)
        widths["new"].append(float(torch.maximum(c - lo, hi - c).max()))
        widths["old"].append(float(_old_half(state, x).max()))
        return False

    lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-10, SolverConfig(lock=False), stop=record)
    new, old = widths["new"], widths["old"]
    assert all(n <= o + 1e-12 for n, o in zip(new, old, strict=True))
    assert any(n < 0.5 * o for n, o in zip(new, old, strict=True) if o < 1)


@pytest.mark.parametrize("delta", [1e-2, 3e-2, 0.1])
def test_rank_stop_ends_early_within_delta(delta: float) -> None:
    net, X = _case()
    k = 3
    S_true, Vh = _exact(net, X)
    want = _rpr(Vh, X, k)
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
