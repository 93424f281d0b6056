"""Tests of the selectors and of RPRSelector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_models import tiny_cnn

from rprselect.scoring import ScoreTable
from rprselect.select import RPRSelector, Selection, select


def _table(rpr: list[float], ids: list[str] | None = None, k: int = 2) -> ScoreTable:
    n = len(rpr)
    curve = np.stack([np.asarray(rpr) * (r + 1) / k for r in range(k)], axis=1)
    return ScoreTable(
        ids=ids or [f"s{i}" for i in range(n)],
        index=np.arange(n),
        rpr_curve=curve,
        singular_values=np.ones((n, k)),
        converged=np.ones(n, bool),
        max_residual=np.zeros(n),
        n_products=np.zeros(n, np.int64),
    )


def test_lowest_picks_the_n_lowest_in_order() -> None:
    t = _table([0.9, 0.1, 0.5, 0.3, 0.7])
    sel = select(t, 3)
    assert isinstance(sel, Selection) and len(sel) == 3
    assert sel.ids == ["s1", "s3", "s2"]
    np.testing.assert_array_equal(sel.indices, [1, 3, 2])
    np.testing.assert_array_equal(sel.scores, [0.1, 0.3, 0.5])


def test_indices_are_pool_positions_after_ranking() -> None:
    t = _table([0.9, 0.1, 0.5, 0.3, 0.7]).ranked()
    sel = select(t, 2)
    np.testing.assert_array_equal(sel.indices, [1, 3])  # positions in the pool, not the table


@pytest.mark.parametrize("n", [0, -1, 6])
def test_n_out_of_range(n: int) -> None:
    with pytest.raises(ValueError, match=r"n must satisfy 1 <= n <= pool size = 5"):
        select(_table([0.1] * 5), n)


def test_bad_arguments() -> None:
    t = _table([0.1, 0.2])
    with pytest.raises(TypeError, match="n must be an int"):
        select(t, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy must be"):
        select(t, 1, "highest")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scores must be a ScoreTable"):
        select([0.1, 0.2], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="features must have one row"):
        select(t, 1, "diverse", features=np.zeros((3, 2)))


def test_ties_follow_pool_order_or_the_rng() -> None:
    t = _table([0.5] * 8)
    assert select(t, 3).ids == ["s0", "s1", "s2"]
    a = select(t, 3, rng=1).ids
    assert a == select(t, 3, rng=np.random.default_rng(1)).ids
    assert len({tuple(select(t, 3, rng=s).ids) for s in range(6)}) > 1


def test_diverse_skips_near_duplicates_of_what_it_picked() -> None:
    # s0..s2 are the same image; s3, s4 are elsewhere and have slightly higher RPR
    rpr = [0.10, 0.11, 0.12, 0.13, 0.14, 0.9, 0.95]
    feats = np.array([[0, 0], [0, 0], [0, 0], [10, 0], [0, 10], [5, 5], [6, 6]], float)
    t = _table(rpr)
    assert select(t, 3).ids == ["s0", "s1", "s2"]
    sel = select(t, 3, "diverse", features=feats, alpha=0.3)
    assert sel.ids[0] == "s0"  # it starts from the lowest RPR
    assert set(sel.ids) == {"s0", "s3", "s4"}
    assert len(set(sel.ids)) == 3
    # only the 3 * n lowest-RPR samples are candidates
    assert set(select(t, 2, "diverse", features=feats, alpha=0.0).ids) <= {
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
    }


def test_diverse_with_alpha_one_is_lowest() -> None:
    t = _table([0.4, 0.2, 0.3, 0.1, 0.5, 0.6])
    assert select(t, 4, "diverse", alpha=1.0).ids == select(t, 4).ids


def test_diverse_defaults_to_rpr_curves_as_features() -> None:
    t = _table(list(np.linspace(0.1, 0.9, 12)))
    sel = select(t, 4, "diverse")
    assert len(set(sel.ids)) == 4 and sel.ids[0] == "s0"


def test_selector_is_sklearn_shaped() -> None:
    with pytest.raises(TypeError):
        RPRSelector(3)  # type: ignore[misc]  # keyword-only
    s = RPRSelector(k=3, n=2, strategy="lowest", progress=False, solver="dense")
    assert s.get_params()["solver"] == "dense" and s.k == 3
    assert s.set_params(n=3, batch_size=2) is s and s.n == 3
    assert s.score_kwargs["batch_size"] == 2
    pool = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sel = s.select(tiny_cnn(), pool)
    assert len(sel) == 3 and len(s.scores_) == 6 and s.selection_ is sel
    np.testing.assert_array_equal(sel.indices, np.argsort(s.scores_.rpr)[:3])
    assert "RPRSelector(k=3" in repr(s)


def test_selector_diverse_uses_the_pool_as_features() -> None:
    pool = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    s = RPRSelector(k=2, n=3, strategy="diverse", progress=False)
    sel = s.select(tiny_cnn(), pool)
    want = select(s.scores_, 3, "diverse", features=pool.numpy())
    assert sel.ids == want.ids
