"""Tests of the active-learning benchmark: statistics by hand, strategies, a ``--quick`` run."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("scipy", reason="the benchmark's statistics need scipy")

from rprselect import rpr, svd_batch  # noqa: E402
from rprselect.benchmarks import active_learning as al  # noqa: E402
from rprselect.benchmarks import al_report as rep  # noqa: E402
from rprselect.benchmarks import al_strategies as st  # noqa: E402
from rprselect.benchmarks import load  # noqa: E402
from rprselect.benchmarks.al_baselines import k_center_greedy  # noqa: E402
from rprselect.benchmarks.al_loop import ALNet, load_data  # noqa: E402


class TestStatistics:
    def test_auc_by_hand(self) -> None:
        # trapezoids: 10 * 0.6 + 20 * 0.8 over a span of 30
        assert rep.auc([10, 20, 40], [0.5, 0.7, 0.9]) == pytest.approx(22 / 30)

    def test_mean_ci_by_hand(self) -> None:
        m, lo, hi = rep.mean_ci([1.0, 2.0, 3.0])
        half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
        assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))

    def test_wilcoxon_exact_p(self) -> None:
        # 6 positive paired differences: exact two-sided p = 2 / 2**6
        assert rep.wilcoxon_p([1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]) == pytest.approx(2 / 64)
        assert rep.wilcoxon_p([1, 2], [1, 2]) == 1.0

    def test_penalty_matrix_by_hand(self) -> None:
        # a beats b clearly in round 1 and ties in round 2: P[a, b] = 1/2, P[b, a] = 0
        a = np.array([[0.5, 0.80, 0.7], [0.5, 0.81, 0.7], [0.5, 0.79, 0.7]])
        b = np.array([[0.5, 0.60, 0.7], [0.5, 0.62, 0.7], [0.5, 0.61, 0.7]])
        P = rep.penalty_matrix({"a": a, "b": b})
        np.testing.assert_allclose(P, [[0.0, 0.5], [0.0, 0.0]])

    def test_mean_rank_with_ties(self) -> None:
        ranks = rep.mean_rank({"x": [0.9, 0.5], "y": [0.8, 0.5], "z": [0.7, 0.6]})
        assert ranks == {"x": 1.75, "y": 2.25, "z": 2.0}


def test_k_center_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    pool, centres = torch.randn(40, 3, generator=g), torch.randn(5, 3, generator=g)
    idx, dist = k_center_greedy(pool, centres, 6)
    chosen = [*centres]
    for i, d in zip(idx, dist, strict=True):
        mind = torch.stack([(pool - c).norm(dim=1) for c in chosen]).min(0).values
        assert int(torch.argmax(mind)) == i
        assert d == pytest.approx(float(mind[i]))
        chosen.append(pool[i])


@pytest.fixture(scope="module")
def round_() -> st.Round:
    data = load_data("digits", None, None)
    torch.manual_seed(0)
    model = ALNet(1, 10, 8, width=4, hidden=16, dropout=0.25).eval()
    return st.Round(
        model=model,
        x=data.train_x[:40],
        lab_x=data.train_x[40:60],
        lab_y=data.train_y[40:60],
        n=5,
        rng=np.random.default_rng(0),
        k=10,
        n_classes=10,
        params={"mc_samples": 3},
    )


def test_exact_rpr_curves_match_the_dense_solver(round_: st.Round) -> None:
    x = torch.from_numpy(round_.x[:6])
    want = rpr(svd_batch(round_.model, x, k=10, solver="dense"), x).numpy()
    np.testing.assert_allclose(st.exact_rpr_curves(round_.model, round_.x[:6], 10), want, atol=1e-5)


def test_every_pilot_strategy_returns_n_unlabelled_positions(round_: st.Round) -> None:
    for name in (*st.PILOT, "coreset", "rpr_kcenter"):
        round_.rng = np.random.default_rng(1)
        idx = st.query(name, round_)
        assert len(set(idx.tolist())) == 5 and idx.min() >= 0 and idx.max() < 40, name


def test_lowest_is_the_lowest_rpr_and_margin_strat_follows_its_quotas(round_: st.Round) -> None:
    assert set(st.query("lowest", round_)) == set(np.argsort(round_.curve()[:, -1])[:5])
    pred = round_.logits().argmax(1)
    idx = st.query("margin_strat", round_)
    counts = np.bincount(round_.lab_y, minlength=10)
    w = np.where(np.bincount(pred, minlength=10) > 0, 1.0 / (counts + 1), 0.0)
    share = 5 * w / w.sum()
    floor_total = int(np.floor(share).sum())
    got = np.bincount(pred[idx], minlength=10)
    assert (got >= np.minimum(np.floor(share), np.bincount(pred, minlength=10))).all()
    assert got.sum() == 5 and floor_total <= 5


def _args(**kw: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    al.add_arguments(parser)
    ns = parser.parse_args([])
    for key, value in kw.items():
        setattr(ns, key, value)
    return ns


def test_quick_run_writes_consistent_results(tmp_path: Path) -> None:
    args = _args(quick=True, out=str(tmp_path))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert load("active-learning").run(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["budgets"]) == {"20", "40"}
    for b, blk in res["budgets"].items():
        for name, s in blk["summary"].items():
            units = [
                json.loads((tmp_path / "units" / f"b{b}" / name / f"seed{seed}.json").read_text())
                for seed in (0, 1)
            ]
            aucs = [rep.auc(u["n_labelled"], u["accuracy"]) for u in units]
            assert s["auc"][0] == pytest.approx(np.mean(aucs))
            q = np.sum([np.asarray(u["queried_classes"]).sum(0) for u in units], 0)
            assert q.sum() == 2 * 2 * 10  # seeds x rounds x query size
            shares = [np.asarray(u["queried_classes"]).sum(0)[[1, 9]].sum() / 20 for u in units]
            assert s["rare_share"][0] == pytest.approx(np.mean(shares))
            assert s["p_vs_random"] == pytest.approx(
                rep.wilcoxon_p(aucs, blk["summary"]["random"]["auc_per_seed"])
            )
        # paired: every strategy starts from the same start set and first model
        firsts = {s["accuracy_mean"][0] for s in blk["summary"].values()}
        assert len(firsts) == 1
    for png in ("curve_b20.png", "curve_rare_b40.png", "penalty.png"):
        assert (tmp_path / png).stat().st_size > 1000
    printed = buf.getvalue().strip().splitlines()
    assert printed[-1].startswith("| ") and len(printed[-1].split("|")) == 13  # table last
    # a restart finds every unit on disk and runs none
    log: list[str] = []
    cfg = al.settings_from_args(args)
    al.run_benchmark(cfg, tmp_path, log=log.append)
    assert log[0].startswith("16 of 16 units done")
    table = al.combine([tmp_path])
    winner = table.rsplit(": ", 1)[1]
    assert st.eligible(winner)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="dataset must be"):
        al.ALSettings(dataset="cifar")
    with pytest.raises(ValueError, match="strategies must be names"):
        al.ALSettings(strategies=("nope",))
    with pytest.raises(ValueError, match="budgets must be"):
        al.ALSettings(budgets=())


def test_npz_data_in_the_medmnist_layout(tmp_path: Path) -> None:
    pytest.importorskip("rprselect.data.generic", reason="needs the generic data loaders")
    rng = np.random.default_rng(0)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        imgs = (rng.random((n, 14, 14, 3)) * 255).astype(np.uint8)  # N x H x W x C, uint8
        return imgs, rng.choice(3, size=(n, 1), p=[0.6, 0.3, 0.1])

    arrays = {}
    for split, n in (("train", 120), ("val", 10), ("test", 40)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = part(n)
    np.savez(tmp_path / "tiny.npz", **arrays)  # type: ignore[arg-type]
    data = load_data(f"npz:{tmp_path / 'tiny.npz'}", None, None)
    assert data.train_x.shape == (120, 3, 16, 16) and data.n_classes == 3  # padded to 16
    counts = np.bincount(arrays["train_labels"].ravel(), minlength=3)
    assert set(data.rare) == set(np.argsort(counts, kind="stable")[:2].tolist())
    args = _args(
        dataset=f"npz:{tmp_path / 'tiny.npz'}", out=str(tmp_path / "out"), seeds=2,
        budgets=[20], rounds=1, query_size=5, steps=5, candidates=30,
        strategies=["random", "margin_rpr_strat"],
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        assert al.run(args) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    s = res["budgets"]["20"]["summary"]["margin_rpr_strat"]
    assert len(s["auc_per_seed"]) == 2 and res["budgets"]["20"]["pool_size"] == 120
