"""The demo end to end with tiny settings: printed tables, files, reproducibility."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_models import one_thread  # noqa: F401

from rprselect.cli import main

pytest.importorskip("sklearn")


def test_demo_prints_tables_and_writes_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--n", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| digit | train | pool | accuracy | mean RPR@10 | mean LPR@3 | proposed |" in text
    for d in range(10):
        assert f"\n| {d} | " in text
    assert "Proposals (5 lowest RPR@10) against the pool's base rate" in text
    assert "Digits 1 and 9:" in text and ("NOT enriched" in text or "enriched" in text)
    assert str(out / "scores.csv") in text and str(out / "proposals_grid.png") in text

    with open(out / "scores.csv") as fh:
        scores = list(csv.DictReader(fh))
    assert len(scores) == 899  # the held-out half of the 1797 digits
    rpr = np.array([float(r["rpr"]) for r in scores])
    assert (np.diff(rpr) >= 0).all() and ((rpr >= 0) & (rpr <= 1)).all()
    with open(out / "proposals.csv") as fh:
        props = list(csv.DictReader(fh))
    assert len(props) == 5
    np.testing.assert_allclose([float(p["rpr"]) for p in props], rpr[:5], rtol=1e-12)
    assert {p["digit"] for p in props} <= {str(d) for d in range(10)}
    # the per-digit "proposed" column adds up to n
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and line.split("|")[1].strip().isdigit()
    ][:10]
    assert sum(int(r.split("|")[7]) for r in rows) == 5
    for name in ("rpr_by_digit.png", "proposals_vs_base.png", "proposals_grid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_demo_is_reproducible(tmp_path: Path) -> None:
    from rprselect.demo import run_demo

    with open(tmp_path / "a.txt", "w") as fa, open(tmp_path / "b.txt", "w") as fb:
        a = run_demo(out=tmp_path / "a", n=4, epochs=1, stream=fa)
        b = run_demo(out=tmp_path / "b", n=4, epochs=1, stream=fb)
    text_a, text_b = ((tmp_path / f"{x}.txt").read_text() for x in "ab")
    # the first line holds timings and the file list the output folder
    strip = lambda t: t.split("\n", 1)[1].split("Files:")[0]  # noqa: E731
    assert strip(text_a) == strip(text_b)
    np.testing.assert_array_equal(a.scores.rpr_curve, b.scores.rpr_curve)
    assert a.selection.ids == b.selection.ids
    assert 0 < a.rare_share_pool < 1 and a.enrichment >= 0


def test_demo_rejects_a_bad_n_before_training(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--n", "0", "--out", str(tmp_path / "d")]) == 2
    assert "n must satisfy 1 <= n <= pool size = 899" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
