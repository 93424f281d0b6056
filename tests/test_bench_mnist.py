"""The MNIST class-imbalance benchmark: its --quick run on the shared data, and its pieces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rprselect
from rprselect.benchmarks import mnist_imbalance as bench
from rprselect.data import ImageLabels
from rprselect.models import MNISTNet

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST idx files not found in {MNIST_DIR}",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mnist_quick")
    threads = torch.get_num_threads()
    try:
        status = bench.main(
            ["--quick", "--data-dir", str(MNIST_DIR), "--out", str(out), "--threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return out, json.loads((out / "results.json").read_text())


@needs_mnist
@pytest.mark.slow
class TestQuickRun:
    def test_outputs_exist(self, quick_run: tuple[Path, dict[str, Any]]) -> None:
        out, results = quick_run
        for name in ("report.md", "train_log.json", "per_image.npz", *results["figures"].values()):
            assert (out / name).is_file(), name
        for name in bench.MODELS:
            assert (out / f"model_{name}.pt").is_file()
        assert set(results["figures"]) == {"fig1", "fig2", "fig3"}
        assert all((out / f).stat().st_size > 10_000 for f in results["figures"].values())
        report = (out / "report.md").read_text()
        assert "0.9864" in report and "0.9329" in report  # the paper's column is there
        for stage in ("load data", "train balanced", "analyse unbalanced", "figures", "total"):
            assert stage in results["seconds"] and results["seconds"][stage] >= 0

    def test_settings_and_training(self, quick_run: tuple[Path, dict[str, Any]]) -> None:
        _, results = quick_run
        s = results["settings"]
        assert (s["epochs"], s["train_subset"], s["test_subset"]) == (1, 5000, 1000)
        bal, unbal = results["training"]["balanced"], results["training"]["unbalanced"]
        assert bal["n_train"] == 5000 and len(bal["loss"]) == 1 == len(unbal["loss"])
        # 99% of the 1s and 9s are gone, every other digit is untouched
        for d in range(10):
            if d in (1, 9):
                assert unbal["train_counts"][d] == max(1, round(0.01 * bal["train_counts"][d]))
            else:
                assert unbal["train_counts"][d] == bal["train_counts"][d]
        assert unbal["n_train"] == sum(unbal["train_counts"])

    @pytest.mark.parametrize("name", bench.MODELS)
    def test_summary_integrity(self, quick_run: tuple[Path, dict[str, Any]], name: str) -> None:
        _, results = quick_run
        m = results["models"][name]
        assert m["n_test"] == 1000 == sum(m["test_counts"])
        assert 0.0 <= m["tensor_accuracy"] <= 1.0
        per_digit = np.asarray(m["tensor_accuracy_per_digit"])
        assert per_digit.shape == (10,) and ((per_digit >= 0) & (per_digit <= 1)).all()
        rank_acc = np.asarray(m["rank_k_accuracy_per_digit"])
        assert rank_acc.shape == (10, bench.K) and ((rank_acc >= 0) & (rank_acc <= 1)).all()
        assert len(m["rank_k_accuracy"]) == bench.K
        counts = np.asarray(m["test_counts"])
        np.testing.assert_allclose(per_digit @ counts / counts.sum(), m["tensor_accuracy"])
        for metric in ("rpr", "lpr"):
            assert m[f"{metric}_monotone"], metric
            for stat in ("min", "q25", "median", "mean", "q75", "max"):
                curves = np.asarray(m[metric][stat])
                assert curves.shape == (10, bench.K), (metric, stat)
                assert ((curves >= -1e-12) & (curves <= 1 + 1e-9)).all(), (metric, stat)
                assert (np.diff(curves, axis=1) >= -1e-12).all(), (metric, stat)
            assert sorted(m[f"lowest_{metric}_digits"]) == list(range(10))
        np.testing.assert_allclose(np.asarray(m["lpr"]["min"])[:, -1], 1.0, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(m["lpr"]["max"])[:, -1], 1.0, rtol=0, atol=1e-9)
        assert m["lpr_full_rank_max_deviation"] <= 1e-9
        assert m["max_svd_residual"] < 1e-8

    @pytest.mark.parametrize("name", bench.MODELS)
    def test_rank10_fails_on_the_same_images(
        self, quick_run: tuple[Path, dict[str, Any]], name: str
    ) -> None:
        out, results = quick_run
        r = results["models"][name]["rank10_identity"]
        assert r["identical"] and r["prediction_disagreements"] == 0
        assert r["tensor_failures"] == r["rank10_failures"] == r["common_failures"]
        assert r["max_relative_gap"] < 1e-9
        with np.load(out / "per_image.npz") as f:
            labels, pred, rank = (
                f[f"{name}_labels"],
                f[f"{name}_pred_tensor"],
                f[f"{name}_pred_rank"],
            )
            lpr = f[f"{name}_lpr"]
        np.testing.assert_array_equal(
            np.flatnonzero(pred != labels), np.flatnonzero(rank[:, -1] != labels)
        )
        assert r["tensor_failures"] == int((pred != labels).sum())
        np.testing.assert_allclose(lpr[:, -1], 1.0, rtol=0, atol=1e-9)

    def test_reuse_loads_the_saved_models(self, quick_run: tuple[Path, dict[str, Any]]) -> None:
        out, first = quick_run
        threads = torch.get_num_threads()
        try:
            status = bench.main(
                ["--reuse", "--quick", "--test-subset", "100", "--out", str(out), "--threads", "1"]
            )
        finally:
            torch.set_num_threads(threads)
        assert status == 0
        again = json.loads((out / "results.json").read_text())
        assert again["settings"]["reuse"] and again["models"]["balanced"]["n_test"] == 100
        assert again["training"] == first["training"]  # read back from train_log.json
        assert "train balanced" not in again["seconds"]


def test_reuse_without_models_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.main(["--reuse", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model_balanced.pt" in err and "without --reuse" in err


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert bench.main(["--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "--epochs must be >= 1, got 0" in capsys.readouterr().err


def test_analyse_matches_core_rank_k_logits_and_rpr() -> None:
    """The vectorised Eq. 8 and ratios of ``analyse`` agree with the core functions."""
    torch.manual_seed(0)
    model = MNISTNet().eval()
    X = torch.rand(6, 1, 28, 28)
    y = torch.arange(6) % 10
    a = bench.analyse(model, ImageLabels(X, y), chunk=4, dtype=torch.float64)
    res = rprselect.svd_batch(model.double(), X.double(), k=10, solver="dense")
    for r in range(1, 11):
        want = rprselect.rank_k_logits(res, X.double(), r).argmax(-1).numpy()
        np.testing.assert_array_equal(a.pred_rank[:, r - 1], want, err_msg=f"rank {r}")
    np.testing.assert_allclose(a.rpr, rprselect.rpr(res, X.double()).numpy(), atol=1e-12)
    want_lpr = rprselect.lpr(res, rprselect.label_logits(y, 10)).numpy()
    np.testing.assert_allclose(a.lpr, want_lpr, atol=1e-12)
    np.testing.assert_array_equal(a.pred_tensor, model(X.double()).argmax(1).numpy())


def test_summarise_flags_different_failures() -> None:
    """The identity check is not vacuous: a rank-10 failure set that differs is reported."""
    labels = np.arange(12) % 10
    pred = labels.copy()
    pred[2] = 0  # the network fails on image 2
    rank = np.tile(labels[:, None], (1, bench.K))
    rank[3, -1] = 0  # the rank-10 CNN fails on image 3 instead
    ratios = np.tile(np.linspace(0.1, 1.0, bench.K), (12, 1))
    a = bench.Analysis(labels, pred, pred, rank, ratios, ratios, 0.0, 0.0)
    s = bench.summarise(a)["rank10_identity"]
    assert not s["identical"]
    assert (s["tensor_failures"], s["rank10_failures"], s["common_failures"]) == (1, 1, 0)
    assert s["prediction_disagreements"] == 2
    pred = labels.copy()
    pred[10] = 5  # one of the two zeros fails, in both models
    same = bench.summarise(
        bench.Analysis(
            labels, pred, pred, np.tile(pred[:, None], (1, 10)), ratios, ratios, 0.0, 0.0
        )
    )
    assert same["rank10_identity"]["identical"]
    assert same["tensor_accuracy_per_digit"][0] == 0.5 and same["tensor_accuracy"] == 11 / 12
    assert same["rpr_monotone"] and same["rpr"]["median"][0] == ratios[0].tolist()
