"""Tests of ``rprselect bench brats``: the ``--quick`` run's outputs, ``--reuse``, bad cases, and
the analysis helpers (Table-2 quantiles, Dice, k-fold splits, the stitched prediction)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "monai", reason="the BraTS benchmark needs MONAI (pip install rprselect[monai])"
)
pytest.importorskip("nibabel", reason="the BraTS benchmark needs nibabel")
pytest.importorskip("scipy", reason="Spearman's correlation needs scipy")
pytest.importorskip("matplotlib", reason="Figure 4 needs matplotlib")

from rprselect.benchmarks import brats  # noqa: E402
from rprselect.benchmarks.brats_analysis import (  # noqa: E402
    QUANTILE_BINS,
    binary_dice,
    quantile_table,
    spearman,
    volume_rpr,
)
from rprselect.benchmarks.brats_train import kfold_splits, predict  # noqa: E402

VOLUME_COLUMNS = {"case", "fold", "dice", "rpr", "converged", "n_products", "tumour_voxels"}
SLICE_COLUMNS = {"case", "fold", "z", "dice", "rpr", "converged", "tumour_pixels"}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("brats_quick")
    assert brats.main(["--quick", "--out", str(out), "--threads", "1"]) == 0
    return out


def test_quick_volume_csv(quick: Path) -> None:
    rows = _rows(quick / "volumes.csv")
    assert VOLUME_COLUMNS <= set(rows[0]), f"columns {list(rows[0])}"
    cases = json.loads((quick / "results.json").read_text())["cases"]
    assert sorted(r["case"] for r in rows) == sorted(cases), "every case is tested exactly once"
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0, r
        assert 0.0 <= float(r["rpr"]) <= 1.0 + 1e-9, r
        assert int(r["n_products"]) > 0, r


def test_quick_slice_csv(quick: Path) -> None:
    rows = _rows(quick / "slices.csv")
    assert rows, "the quick run scores axial slices"
    assert SLICE_COLUMNS <= set(rows[0]), f"columns {list(rows[0])}"
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0, r
        assert 0.0 <= float(r["rpr"]) <= 1.0 + 1e-9, r
    # slices are unique per case
    keys = [(r["case"], r["z"]) for r in rows]
    assert len(keys) == len(set(keys))


def test_quick_splits_partition_the_cases(quick: Path) -> None:
    folds = json.loads((quick / "splits.json").read_text())["folds"]
    cases = json.loads((quick / "results.json").read_text())["cases"]
    tested = [c for f in folds for c in f["test"]]
    assert sorted(tested) == sorted(cases)
    for f in folds:
        assert f["val"] and f["train"], f
        parts = [set(f["test"]), set(f["val"]), set(f["train"])]
        assert set.union(*parts) == set(cases), f
        assert sum(map(len, parts)) == len(cases), f"overlapping parts in {f}"
        assert (quick / "models" / f"fold{f['fold']}_3d.pt").stat().st_size > 0
        assert (quick / "models" / f"fold{f['fold']}_2d.pt").stat().st_size > 0


def test_quick_report_and_figures(quick: Path) -> None:
    report = (quick / "report.md").read_text()
    assert "## Volume level" in report and "## Slice level" in report
    for name, _, _ in QUANTILE_BINS:
        assert report.count(f"| {name} |") == 2, f"row {name!r} in both tables"
    assert "Spearman" in report
    for png in ("fig4_volumes.png", "fig4_slices.png"):
        assert (quick / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    results = json.loads((quick / "results.json").read_text())
    assert len(results["volume"]["table"]) == len(QUANTILE_BINS)
    assert -1.0 <= results["volume"]["spearman"] <= 1.0
    folds = json.loads((quick / "splits.json").read_text())["folds"]
    per_fold = results["slice"]["per_fold"]
    assert [r["fold"] for r in per_fold] == [f["fold"] for f in folds]
    assert sum(r["n"] for r in per_fold) == results["slice"]["n"]
    assert "Within each fold" in report


def test_reuse_reproduces_the_analysis(quick: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(quick, again)
    first = {r["case"]: r for r in _rows(quick / "volumes.csv")}
    assert brats.main(["--quick", "--reuse", "--no-slices", "--out", str(again)]) == 0
    for r in _rows(again / "volumes.csv"):
        assert float(r["dice"]) == pytest.approx(float(first[r["case"]]["dice"]))
        assert float(r["rpr"]) == pytest.approx(float(first[r["case"]]["rpr"]), rel=1e-3)


def test_bad_cases_are_skipped_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rprselect.data.synthetic import write_synthetic_brats

    data = tmp_path / "data"
    ids = write_synthetic_brats(data, n_cases=6, shape=(16, 16, 8), seed=1)
    (data / ids[0] / "T1.nii.gz").unlink()  # missing modality
    (data / ids[1] / "FLAIR.nii.gz").write_bytes(b"\x1f\x8b not a gzip")  # corrupt file
    out = tmp_path / "out"
    argv = ["--data-dir", str(data), "--out", str(out), "--patch", "8", "--patch2d", "8"]
    argv += ["--depth", "2", "--filters", "2", "--epochs", "1", "--folds", "2", "--k", "2"]
    argv += ["--tol", "0.05", "--no-slices", "--threads", "1", "--modalities", "flair,t1"]
    assert brats.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"skipped case {ids[0]}" in printed and f"skipped case {ids[1]}" in printed
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["cases"]) == sorted(ids[2:])
    assert {s[0] for s in results["skipped"]} == {ids[0], ids[1]}


def test_quantile_table_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    r, d = rng.random(50), rng.random(50)
    rows = {row.name: row for row in quantile_table(r, d)}
    order = np.argsort(r)
    assert rows["below 10%"].n == 5 and rows["above 90%"].n == 5
    assert rows["below 10%"].mean_dice == pytest.approx(d[order[:5]].mean())
    assert rows["10-50%"].mean_dice == pytest.approx(d[order[5:25]].mean())
    assert rows["50-90%"].mean_dice == pytest.approx(d[order[25:45]].mean())
    assert rows["above 90%"].mean_dice == pytest.approx(d[order[45:]].mean())
    assert rows["entire set"].mean_dice == pytest.approx(d.mean())
    assert sum(rows[n].n for n in ("below 10%", "10-50%", "50-90%", "above 90%")) == 50


def test_quantile_table_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        quantile_table([0.1, 0.2], [0.5])


def test_binary_dice_and_spearman() -> None:
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[:2], b[1:3] = 1, 1
    assert binary_dice(a, b) == pytest.approx(0.5)
    assert binary_dice(a, a) == 1.0
    assert np.isnan(binary_dice(np.zeros(3), np.zeros(3)))
    assert binary_dice(np.zeros(3), np.zeros(3), empty=1.0) == 1.0
    rho, p = spearman([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.9])
    assert rho == pytest.approx(1.0) and 0.0 <= p < 0.1


@pytest.mark.parametrize("n, folds", [(7, 5), (10, 3), (4, 2)])
def test_kfold_splits_partition(n: int, folds: int) -> None:
    ids = [f"c{i}" for i in range(n)]
    splits = kfold_splits(ids, folds, seed=3)
    assert len(splits) == folds
    assert sorted(c for f in splits for c in f.test) == sorted(ids)
    for f in splits:
        assert len(f.val) == 1 and f.train
        assert sorted(f.test + f.val + f.train) == sorted(ids)


def test_kfold_splits_rejects_too_few_cases() -> None:
    with pytest.raises(ValueError, match="folds"):
        kfold_splits(["a", "b", "c"], 2)


def test_stitched_operator_prediction_is_monai_sliding_window() -> None:
    from rprselect.models import PocketUNet

    torch.manual_seed(0)
    model = PocketUNet(2, 2, dims=3, depth=2, filters=2).eval()
    x = torch.randn(2, 10, 12, 9)
    value = volume_rpr(model, x, (8, 8, 8), k=2, tol=1e-2)
    monai_pred = predict(model, x, 8).argmax(0).numpy()
    assert np.array_equal(value.prediction, monai_pred)
    assert 0.0 <= value.rpr <= 1.0
