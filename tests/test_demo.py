"""The demo end to end with tiny settings: its proposals checked against its own scores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from rprselect.acquisition import Labelled, acquire, margin
from rprselect.cli import main
from rprselect.demo import COMPARED, RARE, run_demo
from rprselect.select import DEFAULT_STRATEGY, PAPER_STRATEGY

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("demo")
    with open(out / "log.txt", "w") as fh:
        result = run_demo(out=out / "d", n=6, epochs=1, stream=fh)
    return result, out


def test_every_strategy_is_shown_on_the_same_pool(demo) -> None:
    r, _ = demo
    assert list(r.selections) == list(dict.fromkeys(COMPARED))
    assert {DEFAULT_STRATEGY, "margin", PAPER_STRATEGY} <= set(r.selections)
    assert r.selection is r.selections[DEFAULT_STRATEGY]
    assert len(r.scores) == 899 and r.scores.logits is not None


def test_proposals_follow_the_scores(demo) -> None:
    r, _ = demo
    t = r.scores
    rows = {int(i): j for j, i in enumerate(t.index)}
    # the paper's rule: the 6 lowest RPR at rank k, in ascending order
    low = r.selections[PAPER_STRATEGY]
    want = t.index[np.argsort(t.rpr, kind="stable")[:6]]
    np.testing.assert_array_equal(low.indices, want)
    # margin: the 6 smallest softmax margins of the model's own logits, smallest first
    m = r.selections["margin"]
    u = margin(t.logits)
    np.testing.assert_array_equal(m.indices, t.index[np.argsort(-u, kind="stable")[:6]])
    np.testing.assert_allclose(m.utility, u[[rows[int(i)] for i in m.indices]])
    # every other strategy, recomputed from the table and the training labels
    for name in set(r.selections) - {PAPER_STRATEGY}:
        d = r.selections[name]
        pos = acquire(name, t, 6, labelled=Labelled(y=r.train_labels), rng=0)
        np.testing.assert_array_equal(d.indices, t.index[pos])
        np.testing.assert_allclose(d.scores, t.rpr[[rows[int(i)] for i in d.indices]])
    # the stratified one: quotas from the training counts, by predicted class
    strat = r.selections["margin_rpr_strat"]
    counts = np.bincount(r.train_labels, minlength=10)
    got = np.bincount(r.predicted[strat.indices], minlength=10)
    w = np.where(np.bincount(r.predicted, minlength=10) > 0, 1.0 / (counts + 1), 0.0)
    assert (got >= np.floor(6 * w / w.sum())).all() and got.sum() == 6


def test_shares_are_counted_from_the_labels(demo) -> None:
    r, _ = demo
    for name, sel in r.selections.items():
        y = r.pool_labels[sel.indices]
        assert r.rare_share(name) == pytest.approx(np.isin(y, RARE).mean())
        wrong = (r.predicted[sel.indices] != y).mean()
        assert r.wrong_share(name) == pytest.approx(wrong)
    assert r.rare_share_pool == pytest.approx(np.isin(r.pool_labels, RARE).mean())
    assert r.enrichment == pytest.approx(r.rare_share(DEFAULT_STRATEGY) / r.rare_share_pool)


def test_files_hold_the_same_proposals(demo) -> None:
    r, out = demo
    with open(out / "d" / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    rpr = np.array([float(s["rpr"]) for s in scores])
    assert len(scores) == 899 and (np.diff(rpr) >= 0).all()
    with open(out / "d" / "proposals.csv") as fh:
        props = list(csv.DictReader(fh))
    for name, sel in r.selections.items():
        mine = [p for p in props if p["strategy"] == name]
        assert [int(p["index"]) for p in mine] == sel.indices.tolist()
        assert [int(p["digit"]) for p in mine] == r.pool_labels[sel.indices].tolist()
    for name in ("rpr_by_digit.png", "proposals_vs_base.png", "proposals_grid.png"):
        assert (out / "d" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_demo_is_reproducible(tmp_path: Path) -> None:
    with open(tmp_path / "a.txt", "w") as fa, open(tmp_path / "b.txt", "w") as fb:
        a = run_demo(out=tmp_path / "a", n=4, epochs=1, stream=fa)
        b = run_demo(out=tmp_path / "b", n=4, epochs=1, stream=fb)
    np.testing.assert_array_equal(a.scores.rpr_curve, b.scores.rpr_curve)
    for name in a.selections:
        assert a.selections[name].ids == b.selections[name].ids


def test_demo_rejects_a_bad_n_before_training(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--n", "0", "--out", str(tmp_path / "d")]) == 2
    assert "n must satisfy 1 <= n <= pool size = 899" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
