"""The failure-prediction benchmark: its metrics against hand computations, and --quick runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rprselect.benchmarks import BENCHMARKS
from rprselect.benchmarks import failure_prediction as bench
from rprselect.benchmarks.failure_metrics import (
    auroc,
    average_ranks,
    bootstrap_aurocs,
    enrichment,
    roc_curve,
    top_mean,
)


class TestAuroc:
    def test_hand_computed(self) -> None:
        # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 beats one, 0.8 both -> 3/4
        assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
        # a tie between a positive and a negative counts 1/2: (0.5 + 1 + 1 + 1) / 4
        assert auroc(np.array([1.0, 1.0, 2.0, 0.0]), np.array([1, 0, 1, 0])) == 0.875
        assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]

    def test_perfect_reversed_and_one_class(self) -> None:
        y = np.array([0, 0, 0, 1, 1], dtype=bool)
        assert auroc(np.arange(5.0), y) == 1.0
        assert auroc(-np.arange(5.0), y) == 0.0
        assert auroc(np.ones(5), y) == 0.5
        assert math.isnan(auroc(np.arange(3.0), np.ones(3, dtype=bool)))

    def test_against_sklearn_with_ties(self) -> None:
        sk = pytest.importorskip("sklearn.metrics")
        rng = np.random.default_rng(0)
        for _ in range(5):
            y = rng.random(300) < 0.2
            s = np.round(rng.normal(size=300) + y, 1)  # many ties
            assert auroc(s, y) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
            fpr, tpr = roc_curve(s, y)
            assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(s, y), abs=1e-12)

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError, match="same length"):
            auroc(np.zeros(3), np.zeros(2, dtype=bool))
        with pytest.raises(ValueError, match="boolean or 0/1"):
            auroc(np.zeros(2), np.array([0, 2]))

    def test_bootstrap(self) -> None:
        y = np.array([0] * 20 + [1] * 10, dtype=bool)
        rng = np.random.default_rng(1)
        scores = {"perfect": y + 0.0, "noise": rng.random(30), "half": y + rng.random(30)}
        out = bootstrap_aurocs(scores, y, n_boot=200, seed=0, reference="noise")
        assert out["perfect"]["auroc"] == out["perfect"]["lo"] == out["perfect"]["hi"] == 1.0
        assert out["noise"]["diff"] == out["noise"]["diff_lo"] == out["noise"]["diff_hi"] == 0
        for r in out.values():
            assert r["lo"] <= r["auroc"] <= r["hi"]
        assert out["perfect"]["diff"] == pytest.approx(1.0 - auroc(scores["noise"], y))


class TestEnrichment:
    def test_hand_computed(self) -> None:
        s = np.array([9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0])
        wrong = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
        e = enrichment(s, wrong, 0.2)  # top 2: one error -> 0.5 over a base rate of 0.3
        assert e == {"top_rate": 0.5, "base_rate": 0.3, "enrichment": pytest.approx(0.5 / 0.3)}

    def test_ties_enter_fractionally(self) -> None:
        # top 2 of 10: the 5 (an error), then one slot shared by three tied 4s holding one error
        s = np.array([5.0, 4, 4, 4, 1, 1, 1, 1, 1, 1])
        wrong = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        assert top_mean(s, wrong, 0.2) == pytest.approx((1 + 1 / 3) / 2)
        assert enrichment(s, wrong, 0.2)["enrichment"] == pytest.approx((2 / 3) / 0.2)
        assert top_mean(s[::-1], wrong[::-1], 0.2) == top_mean(s, wrong, 0.2)


def _quick(tmp: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    status = bench.main(["--quick", "--out", str(tmp), *extra])
    results = json.loads((tmp / "results.json").read_text()) if status == 0 else {}
    return status, results


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fp_digits")
    status, results = _quick(out)
    assert status == 0
    return out, results


class TestQuickDigits:
    def test_registered(self) -> None:
        assert BENCHMARKS["failure-prediction"][0] == "failure_prediction"

    def test_values_recomputed_from_the_saved_scores(
        self, digits_run: tuple[Path, dict[str, Any]]
    ) -> None:
        out, results = digits_run
        with np.load(out / "units" / "model.npz") as z:
            wrong, curve = z["wrong"], z["rpr_curve"]
            utils = {k[2:]: z[k] for k in z.files if k.startswith("u:")}
        c = results["summary"]["classification"]
        assert c["n"] == 200 == len(wrong) and c["errors"] == int(wrong.sum()) > 0
        rows = {r["score"]: r for r in c["rows"]}
        derived = {"margin_ratio", "margin_shuffled_rpr"}
        assert set(rows) == set(bench.score_names("classification", 10)) | derived
        np.testing.assert_array_equal(utils["lowest"], -curve[:, -1])
        np.testing.assert_array_equal(utils["rpr@3"], -curve[:, 2])
        sk = pytest.importorskip("sklearn.metrics")
        for name in ("lowest", "max_softmax", "margin", "vim", "jacobian_frobenius"):
            assert rows[name]["auroc"] == pytest.approx(sk.roc_auc_score(wrong, utils[name]))
            assert rows[name]["lo"] <= rows[name]["auroc"] <= rows[name]["hi"]
        # enrichment by hand: errors among the 20 highest max-softmax utilities (no ties there)
        u = utils["max_softmax"]
        assert len(np.unique(u)) == len(u)
        top = np.argsort(-u)[:20]
        want = wrong[top].mean() / wrong.mean()
        assert rows["max_softmax"]["enrichment"] == pytest.approx(want)
        assert rows["max_softmax"]["diff"] == 0.0
        # the fusion's controls, by hand: margin weighted by the min-max scaled ||f||/||x||
        conf = -utils["output_input_ratio"]
        by_hand = (1 + utils["margin"]) * (1 - (conf - conf.min()) / (conf.max() - conf.min()))
        assert rows["margin_ratio"]["auroc"] == pytest.approx(auroc(by_hand, wrong))
        assert rows["margin_shuffled_rpr"]["svd"] == "control"
        f = c["fusion"]["margin_ratio"]
        assert f["diff"] == pytest.approx(
            rows["margin_rpr"]["auroc"] - rows["margin_ratio"]["auroc"]
        )
        t, paper = c["target"], c["paper_rule"]
        assert t["default"] == bench.library_default() == results["settings"]["default_score"]
        assert paper["default"] == "lowest"
        assert paper["met"] == (rows["lowest"]["auroc"] >= rows["max_softmax"]["auroc"])
        assert t["diff"] == rows[t["default"]]["auroc"] - rows["max_softmax"]["auroc"]
        assert c["svd"]["best_control"] in ("output_input_ratio", "max_logit", "energy",
                                            "jacobian_frobenius")  # fmt: skip

    def test_outputs_and_resume(
        self, digits_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        out, results = digits_run
        assert (out / "roc.png").stat().st_size > 10_000
        assert (out / "models" / "model.pt").is_file()
        report = (out / "report.md").read_text()
        lowest = next(r for r in results["summary"]["classification"]["rows"]
                      if r["score"] == "lowest")  # fmt: skip
        assert f"| lowest | SVD | {lowest['auroc']:.3f} [" in report
        status, again = _quick(out)  # reuses the saved model and scores
        assert status == 0 and "reusing" in capsys.readouterr().out
        assert again["summary"] == results["summary"]


def _write_pngseg(root: Path, n: int = 6, size: int = 16) -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for sub in ("image", "label"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        img = (rng.random((size, size)) * 60).astype(np.uint8)
        lab = np.zeros((size, size), np.uint8)
        r, c = rng.integers(2, size - 8, 2)
        img[r : r + 6, c : c + 6] += 150
        lab[r : r + 6, c : c + 6] = 255
        Image.fromarray(img).save(root / "image" / f"{i}.png")
        Image.fromarray(lab).save(root / "label" / f"{i}.png")


def test_quick_pngseg(tmp_path: Path) -> None:
    from rprselect.benchmarks.brats_analysis import spearman

    _write_pngseg(tmp_path / "seg")
    status, results = _quick(tmp_path / "out", "--data", f"pngseg:{tmp_path / 'seg'}",
                             "--tile", "8", "--k", "3")  # fmt: skip
    assert status == 0
    level = results["summary"]["images"]
    with np.load(tmp_path / "out" / "units" / "model.npz") as z:
        fg, dice, curve = z["has_fg"], z["dice"], z["rpr_curve"]
    assert level["n"] == int(fg.sum()) > 3 and ((dice >= 0) & (dice <= 1)).all()
    rows = {r["score"]: r for r in level["rows"]}
    assert set(rows) == set(bench.score_names("segmentation", 3))
    rho, p = spearman(curve[fg, -1], dice[fg])  # `lowest`: Spearman(RPR, Dice)
    assert rows["lowest"]["spearman"] == pytest.approx(rho, nan_ok=True)
    assert sum(r["n"] for r in level["table2"][:4]) == level["n"] == level["table2"][4]["n"]
    worst = dice[fg] <= np.quantile(dice[fg], 0.25)
    if worst.any() and not worst.all():
        assert rows["lowest"]["auroc"] == pytest.approx(auroc(-curve[fg, -1], worst))
    assert (tmp_path / "out" / "score_vs_dice_images.png").is_file()


def test_bad_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--data", "cifar", "--out", str(tmp_path)]) == 2
    assert "--data must be digits, mnist, brats, npz:PATH or pngseg:DIR" in capsys.readouterr().err
    assert bench.main(["--quick", "--default-score", "nope", "--out", str(tmp_path)]) == 2
    assert "--default-score must be one of" in capsys.readouterr().err
    assert bench.main(["--quick", "--rare", "1,x", "--out", str(tmp_path)]) == 2
    assert "--rare must be class indices" in capsys.readouterr().err
    assert (
        bench.main(["--quick", "--weights", str(tmp_path / "no.pt"), "--out", str(tmp_path)]) == 2
    )
    assert "--weights must be a state-dict file" in capsys.readouterr().err


def test_quick_npz_and_weights(tmp_path: Path) -> None:
    """A 3-class, 3-channel, 10x10 MedMNIST-style archive (padded to 12x12), then --weights."""
    rng = np.random.default_rng(0)
    arrays: dict[str, Any] = {}
    for split, n in (("train", 90), ("val", 30), ("test", 60)):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 80, (n, 10, 10, 3)).astype(np.uint8)
        for c in range(3):
            x[y == c, 2 * c : 2 * c + 4, :, c] += 150  # a class-specific bright band
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    np.savez(tmp_path / "d.npz", **arrays)
    status, results = _quick(tmp_path / "a", "--data", f"npz:{tmp_path / 'd.npz'}", "--k", "3")
    assert status == 0
    c = results["summary"]["classification"]
    assert c["n"] == 60 and results["units"]["model"]["num_classes"] == 3
    assert results["units"]["model"]["n_ref"] == 30
    weights = tmp_path / "a" / "models" / "model.pt"
    status, again = _quick(tmp_path / "b", "--data", f"npz:{tmp_path / 'd.npz'}", "--k", "3",
                           "--weights", str(weights))  # fmt: skip
    assert status == 0 and again["units"]["model"]["loaded"] == str(weights)
    assert again["summary"] == results["summary"]  # the same model gives the same numbers


@pytest.mark.slow
def test_quick_brats_per_fold_spearman(tmp_path: Path) -> None:
    """Synthetic BraTS cases: slices and volumes per fold model; the per-fold Spearman(RPR,
    Dice) of the report is scipy's on the saved per-slice values."""
    pytest.importorskip("monai")
    pytest.importorskip("nibabel")
    from rprselect.benchmarks.brats_analysis import spearman

    status, results = _quick(tmp_path, "--data", "brats")
    assert status == 0
    assert set(results["summary"]) == {"slices", "volumes"}
    per_unit = results["summary"]["slices"]["per_unit"]
    assert [r["unit"] for r in per_unit] == ["fold0_2d", "fold1_2d"]
    for rec in per_unit:
        with np.load(tmp_path / "units" / f"{rec['unit']}.npz") as z:
            fg, dice, curve = z["has_fg"], z["dice"], z["rpr_curve"]
        assert rec["n"] == int(fg.sum())
        want = spearman(curve[fg, -1].tolist(), dice[fg].tolist())
        np.testing.assert_allclose(rec["lowest"], want, equal_nan=True)
    vols = results["summary"]["volumes"]
    assert vols["n"] == 4 and len(vols["table2"]) == 5  # 4 synthetic cases, each tested once
    assert (tmp_path / "score_vs_dice_slices.png").is_file()
