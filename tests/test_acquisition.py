"""Acquisition scores and batches (rprselect.acquisition) against hand computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rprselect import acquisition as A
from rprselect.table import ScoreTable

# Two samples, three classes: softmax by hand.
Z = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])


def _p(z: np.ndarray) -> np.ndarray:
    e = np.exp(z)
    return e / e.sum()


def _table(curve: np.ndarray, folder: Path) -> ScoreTable:
    """A ScoreTable with these RPR curves, through the public CSV reader."""
    n, k = curve.shape
    lines = ["id,rpr," + ",".join(f"rpr_{r + 1}" for r in range(k))]
    lines += [f"s{i},{c[-1]!r}," + ",".join(repr(float(v)) for v in c) for i, c in enumerate(curve)]
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    return ScoreTable.from_csv(folder / "t.csv")


CURVE = np.array([[0.1, 0.2, 0.4], [0.3, 0.5, 0.6], [0.05, 0.5, 0.9]])


class TestScoresByHand:
    def test_margin_entropy_max_softmax(self) -> None:
        p0, p1 = _p(Z[0]), _p(Z[1])
        np.testing.assert_allclose(A.margin(Z), [-(p0[0] - p0[1]), -(p1[2] - p1[0])])
        h = [-(p * np.log(p)).sum() for p in (p0, p1)]
        np.testing.assert_allclose(A.entropy(Z), h)
        np.testing.assert_allclose(A.max_softmax(Z), [-p0.max(), -p1.max()])

    def test_logit_controls(self) -> None:
        np.testing.assert_allclose(A.max_logit(Z), [-2.0, -3.0])
        lse = [math.log(math.e**2 + math.e + 1), math.log(2 + math.e**3)]
        np.testing.assert_allclose(A.energy(Z), [-v for v in lse])
        lse2 = [2 * math.log(math.e + math.e**0.5 + 1), 2 * math.log(2 + math.e**1.5)]
        np.testing.assert_allclose(A.energy(Z, T=2.0), [-v for v in lse2])
        np.testing.assert_allclose(
            A.output_input_ratio(Z, [2.0, 3.0]), [-math.sqrt(5) / 2, -3.0 / 3.0]
        )

    def test_rpr_scores_from_a_table_or_an_array(self, tmp_path: Path) -> None:
        t = _table(CURVE, tmp_path)
        np.testing.assert_array_equal(A.rpr_at(t), [0.4, 0.6, 0.9])
        np.testing.assert_array_equal(A.rpr_at(CURVE, 2), [0.2, 0.5, 0.5])
        np.testing.assert_array_equal(A.lowest(t, 1), [-0.1, -0.3, -0.05])
        np.testing.assert_allclose(A.rank_mean(t, 2), [-0.15, -0.4, -0.275])
        np.testing.assert_allclose(A.rank_mean(CURVE), -CURVE.mean(1))

    def test_class_conditional_percentiles(self) -> None:
        ref_rpr = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
        ref_cls = np.array([0, 0, 0, 0, 1, 1])
        rho = np.array([[0.25], [0.2], [0.7], [0.01]])
        pred = np.array([0, 0, 1, 2])  # class 2 has no labels: all labelled samples are used
        u = A.class_conditional(rho, pred, ref_rpr, ref_cls)
        # 0.25: 2 of 4 below -> 0.5; 0.2: 1 below + half of 1 tie -> 1.5/4; 0.7: 1 of 2 below
        np.testing.assert_allclose(u, [1 - 0.5, 1 - 1.5 / 4, 1 - 0.5, 1.0])

    def test_margin_rpr_is_margin_times_rpr_complement(self) -> None:
        curve = np.array([[0.2], [0.6]])
        m = 1.0 + A.margin(Z)
        np.testing.assert_allclose(A.margin_rpr(Z, curve, gamma=2.0), m * [0.8**2, 0.4**2])
        assert np.array_equal(
            np.argsort(A.margin_rpr(Z, curve, gamma=0.0)), np.argsort(A.margin(Z))
        )

    def test_rank_entropy(self) -> None:
        curve = np.array([[0.9], [0.1], [0.5]])
        z = np.array([[5.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # entropy: low, high, middle
        np.testing.assert_allclose(A.rank_entropy(curve, z), [1 / 3, 1.0, 2 / 3])

    def test_vim_and_its_calibration(self) -> None:
        curve = np.array([[0.75], [0.0]])
        xn = np.array([2.0, 1.0])
        res = np.array([2.0 * 0.5, 1.0])  # ||x|| sqrt(1 - RPR)
        lse = np.log(np.exp(Z).sum(1))
        np.testing.assert_allclose(A.vim(Z, curve, xn, alpha=3.0), 3.0 * res - lse)
        alpha = A.calibrate_vim_alpha(Z, curve, xn)
        assert alpha == pytest.approx(np.mean([2.0, 3.0]) / res.mean())


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 16, 4, bias=False),
    ).double()


def test_hutchinson_matches_the_dense_jacobian() -> None:
    model = _tiny_cnn()
    X = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    exact = np.array(
        [float(torch.func.jacrev(lambda v: model(v[None])[0])(x).detach().pow(2).sum()) for x in X]
    )
    est = -A.jacobian_frobenius(model, X, n_probes=4000, seed=1)
    # the relative standard deviation of the estimate is at most sqrt(2 / 4000) = 2.2%
    np.testing.assert_allclose(est, exact, rtol=0.08)
    assert not np.allclose(est, exact, rtol=1e-12), "a 4000-probe estimate cannot be exact"


class TestBatches:
    def test_stratified_quotas_are_known(self) -> None:
        # counts 1 and 3 -> weights 1/2 and 1/4 -> shares 2/3 and 1/3 of n = 6 -> quotas 4, 2
        pred = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
        u = np.arange(10, dtype=float)
        idx = A.stratified_batch(u, pred, [1, 3], 6, rng=0)
        assert np.bincount(pred[idx], minlength=2).tolist() == [4, 2]
        assert idx.tolist() == [4, 3, 2, 1, 9, 8]  # best utility first within each class

    def test_stratified_spills_over_when_a_class_runs_out(self) -> None:
        pred = np.array([0, 1, 1, 1, 1, 1])  # class 0 (no labels) wants 5 of 6 but has 1
        u = np.array([0.0, 5.0, 4.0, 3.0, 2.0, 1.0])
        idx = A.stratified_batch(u, pred, [0, 4], 4, rng=0)
        assert sorted(idx.tolist()) == [0, 1, 2, 3]
        # classes never predicted get no quota: everything goes to class 1 here
        assert A.stratified_batch(u[1:], pred[1:], [0, 4], 2, rng=0).tolist() == [0, 1]

    def test_power_batch_frequencies_follow_the_formula(self) -> None:
        u = np.array([3.0, 1.0, 2.0, 0.0])
        rng = np.random.default_rng(0)
        draws = 6000
        for transform, s in (
            ("rank", 1.0 / np.array([1.0, 3.0, 2.0, 4.0])),
            ("min", u - u.min() + 1e-3 * 3.0),
        ):
            for T in (1.0, 0.5):
                first = [A.power_batch(u, 1, T, rng, transform=transform)[0] for _ in range(draws)]
                freq = np.bincount(first, minlength=4) / draws
                want = s ** (1 / T) / (s ** (1 / T)).sum()
                np.testing.assert_allclose(freq, want, atol=0.025)  # 4 sd of a frequency

    def test_power_batch_has_no_duplicates(self) -> None:
        idx = A.power_batch(np.linspace(0, 1, 50), 50, 1.0, 3)
        assert sorted(idx.tolist()) == list(range(50))

    def test_ranked_batch_trades_utility_against_distance(self) -> None:
        feats = np.array([[0.0], [0.01], [10.0], [5.0]])
        u = np.array([1.0, 0.99, 0.0, 0.5])
        assert A.ranked_batch(u, feats, 2, alpha=0.0).tolist() == [0, 1]
        assert A.ranked_batch(u, feats, 2, alpha=0.9).tolist() == [0, 2]


class TestAcquireByName:
    def test_top_matches_the_utility(self) -> None:
        idx = A.acquire("margin", None, 1, logits=Z)
        assert idx.tolist() == [int(np.argmax(A.margin(Z)))]
        assert A.acquire("lowest", CURVE, 2, r=1).tolist() == [2, 0]

    def test_stratified_by_name(self) -> None:
        z = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
        lab = A.Labelled(y=np.array([0, 0, 0, 1]))  # counts 3, 1 -> quotas 1, 3 of 4
        idx = A.acquire("random", None, 4, logits=z, labelled=lab, batch="stratified", rng=0)
        assert np.bincount(z[idx].argmax(1), minlength=2).tolist() == [1, 3]

    def test_every_name_runs(self) -> None:
        rng = np.random.default_rng(0)
        curve = np.sort(rng.random((12, 4)), 1)
        z = rng.normal(size=(12, 3))
        lab = A.Labelled(
            y=rng.integers(0, 3, 9),
            rpr_curve=np.sort(rng.random((9, 4)), 1),
            logits=rng.normal(size=(9, 3)),
            x_norm=rng.random(9) + 1,
        )
        for name in A.ACQUISITIONS:
            if name == "jacobian_frobenius":
                continue
            for batch in ("top", "power", "stratified"):
                idx = A.acquire(
                    name, curve, 5, logits=z, x_norm=rng.random(12) + 1, labelled=lab, batch=batch
                )
                assert len(set(idx.tolist())) == 5, (name, batch)


class TestErrors:
    def test_nan_scores_are_rejected(self) -> None:
        with pytest.raises(ValueError, match="NaN"):
            A.lowest(np.array([[0.1], [np.nan]]))
        with pytest.raises(ValueError, match="utility must not contain NaN"):
            A.power_batch([0.1, np.nan], 1)

    def test_messages_name_the_parameter(self) -> None:
        with pytest.raises(ValueError, match=r"r must satisfy 1 <= r <= k = 3, got 4"):
            A.rpr_at(CURVE, 4)
        with pytest.raises(TypeError, match="n must be an int"):
            A.stratified_batch([1.0], [0], [1], 1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="T must be a finite number > 0"):
            A.power_batch([1.0, 2.0], 1, T=0.0)
        with pytest.raises(ValueError, match="name must be one of"):
            A.acquire("nope", CURVE, 1)
        with pytest.raises(ValueError, match="needs logits"):
            A.acquire("margin", CURVE, 1)
        with pytest.raises(ValueError, match=r"x_norm must be finite and > 0"):
            A.output_input_ratio(Z, [1.0, 0.0])
        with pytest.raises(ValueError, match="pred must hold classes"):
            A.stratified_batch([1.0, 2.0], [0, 5], [1, 1], 1)
        with pytest.raises(ValueError, match="batch must be"):
            A.acquire("lowest", CURVE, 1, batch="greedy")


class TestSelectByName:
    """``rprselect.select`` with any acquisition name, on a table that kept its logits."""

    @staticmethod
    def _table(folder: Path, logits: bool = True) -> ScoreTable:
        rng = np.random.default_rng(0)
        curve = np.sort(rng.random((8, 3)), 1)
        z = rng.normal(size=(8, 3))
        head = "id,rpr," + ",".join(f"rpr_{r}" for r in (1, 2, 3))
        head += ",logit_1,logit_2,logit_3" if logits else ""
        lines = [head]
        for i in range(8):
            vals = [curve[i, -1], *curve[i]] + (list(z[i]) if logits else [])
            lines.append(f"s{i}," + ",".join(repr(float(v)) for v in vals))
        (folder / "t.csv").write_text("\n".join(lines) + "\n")
        return ScoreTable.from_csv(folder / "t.csv")

    def test_margin_by_name(self, tmp_path: Path) -> None:
        from rprselect.select import select

        t = self._table(tmp_path)
        sel = select(t, 3, "margin")
        u = A.margin(t.logits)
        assert sel.indices.tolist() == np.argsort(-u, kind="stable")[:3].tolist()
        np.testing.assert_allclose(sel.utility, u[sel.indices])
        np.testing.assert_allclose(sel.scores, t.rpr[sel.indices])
        assert sel.strategy == "margin"

    def test_stratified_preset_counts_the_labelled_set(self, tmp_path: Path) -> None:
        from rprselect.select import select

        t = self._table(tmp_path)
        pred = t.logits.argmax(1)
        lab = A.Labelled(y=np.array([0, 0, 0, 1, 2, 2, 2]))
        sel = select(t, 4, "margin_strat", labelled=lab)
        want = A.stratified_batch(A.margin(t.logits), pred, lab.counts(3), 4, rng=0)
        assert sel.indices.tolist() == want.tolist()

    def test_without_logits_the_paper_rule_is_used(self, tmp_path: Path) -> None:
        from rprselect.select import select

        t = self._table(tmp_path, logits=False)
        sel = select(t, 3, "margin_rpr_strat")
        assert sel.strategy == "lowest"
        assert sel.indices.tolist() == np.argsort(t.rpr, kind="stable")[:3].tolist()

    def test_unknown_strategy(self, tmp_path: Path) -> None:
        from rprselect.select import select

        with pytest.raises(ValueError, match="strategy must be one of"):
            select(self._table(tmp_path), 1, "smallest")
