"""Tests of the active-learning benchmark: acquisition functions and a ``--quick`` run."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("modAL", reason="the active-learning benchmark needs modAL (rprselect[modal])")
pytest.importorskip(
    "skorch", reason="the active-learning benchmark needs skorch (rprselect[modal])"
)

import rprselect  # noqa: E402
from rprselect.benchmarks import active_learning as al  # noqa: E402
from rprselect.benchmarks import al_strategies as st  # noqa: E402
from rprselect.benchmarks import load  # noqa: E402
from rprselect.data import load_digits_tensors  # noqa: E402
from rprselect.models import MNISTNet  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine more threads only oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits_tensors()
    return x[:120].numpy(), y[:120].numpy()


@pytest.fixture(scope="module")
def net() -> MNISTNet:
    torch.manual_seed(0)
    return MNISTNet(in_size=8).eval()


class TestKCenter:
    def test_matches_brute_force(self) -> None:
        g = torch.Generator().manual_seed(0)
        pool, centres = torch.randn(40, 3, generator=g), torch.randn(5, 3, generator=g)
        idx, dist = st.k_center_greedy(pool, centres, 6)
        chosen = [*centres]
        for i, d in zip(idx, dist, strict=True):
            mind = torch.stack([(pool - c).norm(dim=1) for c in chosen]).min(0).values
            assert int(torch.argmax(mind)) == i, f"pick {i} is not the farthest point"
            assert d == pytest.approx(float(mind[i]))
            chosen.append(pool[i])
        assert len(set(idx.tolist())) == 6
        assert np.all(np.diff(dist) <= 1e-12), f"distances must not increase: {dist}"

    def test_without_centres(self) -> None:
        idx, _ = st.k_center_greedy(torch.randn(10, 2), torch.empty(0), 10)
        assert sorted(idx.tolist()) == list(range(10))

    def test_bad_n(self) -> None:
        with pytest.raises(ValueError, match="n must satisfy"):
            st.k_center_greedy(torch.randn(3, 2), torch.empty(0), 4)


class TestStrategies:
    def test_rpr_scores_match_svd(self, net: MNISTNet, digits: Any) -> None:
        x = digits[0][:20]
        want = rprselect.rpr(
            rprselect.svd_batch(net, torch.from_numpy(x), k=10), torch.from_numpy(x)
        )
        got = st.rpr_scores(net, x, k=10)
        np.testing.assert_allclose(got, want[:, -1].numpy(), rtol=1e-5, atol=1e-7)
        assert np.all((got >= 0) & (got <= 1 + 1e-9))

    def test_adapter_agrees_with_direct_path(self, net: MNISTNet, digits: Any) -> None:
        pytest.importorskip("rprselect.integrations.modal", reason="modAL adapter not installed")
        x = digits[0][:20]
        assert st.rpr_source().startswith("rprselect.integrations.modal")
        np.testing.assert_allclose(st.rpr_scores(net, x, k=3), st._direct_rpr(net, x, 3), rtol=1e-6)

    def test_rpr_lowest_picks_lowest(self, net: MNISTNet, digits: Any) -> None:
        x = digits[0][:30]
        scores = st.rpr_scores(net, x, k=4)
        idx, picked = st.rpr_lowest_sampling(net, x, n_instances=5, k=4)
        assert sorted(idx.tolist()) == sorted(np.argsort(scores)[:5].tolist())
        np.testing.assert_allclose(np.sort(picked), np.sort(scores)[:5], rtol=1e-6)

    def test_rpr_diverse_among_lowest(self, net: MNISTNet, digits: Any) -> None:
        x = digits[0][:40]
        scores = st.rpr_scores(net, x, k=10)
        idx, _ = st.rpr_diverse_sampling(net, x, n_instances=4, k=10, factor=3)
        assert len(set(idx.tolist())) == 4
        assert set(idx.tolist()) <= set(np.argsort(scores, kind="stable")[:12].tolist())

    def test_hybrid_is_rank_average(self, net: MNISTNet, digits: Any) -> None:
        from scipy.stats import rankdata

        x = digits[0][:30]
        idx, score = st.rpr_entropy_sampling(net, x, n_instances=8, k=10)
        r = st.rpr_scores(net, x, k=10)
        p = torch.softmax(st.predict_logits(net, x), -1)
        h = -(p * p.clamp_min(1e-12).log()).sum(-1).numpy()
        want = 0.5 * (rankdata(1 - r) + rankdata(h)) / len(x)
        np.testing.assert_allclose(score, want[idx], rtol=1e-12)
        assert score.min() >= np.sort(want)[-8] - 1e-12, "did not take the 8 best rank sums"

    def test_bald_zero_without_dropout(self, net: MNISTNet, digits: Any) -> None:
        _, score = st.bald_sampling(net, digits[0][:16], n_instances=16, mc_samples=5)
        np.testing.assert_allclose(score, 0.0, atol=1e-6)

    def test_bald_nonnegative_with_dropout(self, digits: Any) -> None:
        torch.manual_seed(0)
        model = MNISTNet(dropout=0.5, in_size=8)
        _, score = st.bald_sampling(model, digits[0][:16], n_instances=16, mc_samples=8)
        assert np.all(score >= -1e-6) and score.max() > 0

    def test_coreset_uses_labeled_set(self, net: MNISTNet, digits: Any) -> None:
        class Learner:
            estimator = net
            X_training = digits[0][:10]

        x = np.concatenate([digits[0][:10], digits[0][50:60]])
        idx, _ = st.coreset_sampling(Learner(), x, n_instances=5)
        assert all(i >= 10 for i in idx), f"picked an already labeled duplicate: {idx}"

    def test_random_no_duplicates(self, digits: Any) -> None:
        idx, _ = st.random_sampling(None, digits[0], 50, rng=np.random.default_rng(0))
        assert len(set(idx.tolist())) == 50

    def test_unknown_strategy(self) -> None:
        with pytest.raises(ValueError, match="name must be one of"):
            st.query_strategy("nope", seed=0)


class TestSettings:
    def test_bad_values(self) -> None:
        with pytest.raises(ValueError, match="dataset"):
            al.ALSettings(dataset="cifar")
        with pytest.raises(ValueError, match="rounds"):
            al.ALSettings(rounds=0)
        with pytest.raises(ValueError, match="candidates"):
            al.ALSettings(candidates=5, query_size=10)

    def test_start_set_is_imbalanced(self) -> None:
        x, y = load_digits_tensors()
        settings = al.ALSettings(init_fraction=0.2)
        split = al._split(settings, (x, y, x[:10], y[:10]), seed=0)
        start = split.pool_y[split.init]
        assert abs(len(start) - 0.2 * len(y)) <= 0.2 * 0.25 * len(y)
        for digit in (1, 9):
            assert np.sum(start == digit) <= 1, f"digit {digit} is not rare in the start set"
        assert np.sum(start == 0) > 20

    def test_auc_of_constant_curve(self) -> None:
        assert al._auc([10, 20, 50], [0.7, 0.7, 0.7]) == pytest.approx(0.7)
        assert al._auc([0, 10], [0.0, 1.0]) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One ``--quick`` run through the benchmark registry: output folder and printed text."""
    out = tmp_path_factory.mktemp("al_quick")
    module = load("active-learning")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert module.run(parser.parse_args(["--quick", "--out", str(out)])) == 0
    return out, buf.getvalue()


@pytest.mark.slow
class TestQuickRun:
    def test_every_strategy_with_full_curves(self, quick: tuple[Path, str]) -> None:
        out, _ = quick
        res = json.loads((out / "results.json").read_text())
        s = res["settings"]
        assert res["complete"] and res["seeds_done"] == s["seeds"] == 3
        assert set(res["strategies"]) == set(st.STRATEGIES)
        for name, r in res["strategies"].items():
            n = np.asarray(r["n_labeled"])
            assert n.shape == (3, s["rounds"] + 1), f"{name}: sizes {n}"
            assert np.all(np.diff(n, axis=1) == s["query_size"]), f"{name}: sizes {n}"
            assert n[:, 0].tolist() == res["start_sizes"], name
            for key in ("accuracy", "rare_accuracy"):
                a = np.asarray(r[key])
                assert a.shape == (3, s["rounds"] + 1), f"{name} {key} shape {a.shape}"
                assert np.all((a >= 0) & (a <= 1)), f"{name} {key} outside [0, 1]"
            assert all(0 <= v <= 1 for v in r["rare_share"]), name
            assert all(len(q) == s["rounds"] and min(q) >= 0 for q in r["query_seconds"]), name
            summ = res["summary"][name]
            assert 0 <= summ["auc"][0] <= 1 and 0 <= summ["rare_auc"][0] <= 1

    def test_report_pngs_and_table_last(self, quick: tuple[Path, str]) -> None:
        out, printed = quick
        report = (out / "report.md").read_text()
        for name in st.STRATEGIES:
            assert f"| {name} |" in report, f"{name} missing from report.md"
        for png in ("curve_accuracy.png", "curve_rare.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        lines = printed.strip().splitlines()
        table = [line for line in lines if line.startswith("|")]
        assert lines[-len(table) :] == table and len(table) == len(st.STRATEGIES) + 2
        aucs = [float(row.split("|")[3].split("±")[0]) for row in table[2:]]
        assert aucs == sorted(aucs, reverse=True), "table must rank by AUC"
