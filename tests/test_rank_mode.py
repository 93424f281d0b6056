"""The ranking mode from scoring (``tol="rank"``) against the dense float64 oracle."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rprselect
from rprselect import NotConvergedWarning, ScoreSettings, SolverConfig
from rprselect.cli import main
from rprselect.models import PocketUNet
from rprselect.scoring import ScoreTable, score

K, DELTA = 3, 0.01


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(1)
    return PocketUNet(2, 2, dims=2, depth=2, filters=4).double().eval()  # bias-free


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(12, 2, 8, 8, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def oracle(net, pool) -> ScoreTable:
    """RPR(x; k) from the dense float64 Jacobian and LAPACK."""
    return score(net, pool, k=K, tol=1e-10, solver="dense", progress=False)


def test_rank_mode_rprs_lie_within_delta_of_the_oracle(net, pool, oracle) -> None:
    s = ScoreSettings(k=K, tol="rank", rank_delta=DELTA, solver="lanczos", batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotConvergedWarning)  # every sample certified
        got = score(net, pool, settings=s, progress=False)
    assert got.ids == oracle.ids
    err = np.abs(got.rpr - oracle.rpr)
    assert err.max() <= DELTA, err
    assert got.converged.all()
    np.testing.assert_array_equal(np.argsort(got.rpr), np.argsort(oracle.rpr))
    full = score(net, pool, k=K, tol=1e-10, solver="lanczos", batch_size=4, progress=False)
    np.testing.assert_allclose(full.rpr, oracle.rpr, atol=1e-8)
    assert got["n_products"].max() < full["n_products"].min(), "rank mode stops earlier"


def test_rank_mode_through_score_keyword_and_auto_solver(net, pool, oracle) -> None:
    got = score(net, pool[:4], k=K, tol="rank", progress=False)  # auto: lanczos (m = 128)
    assert np.abs(got.rpr - oracle.rpr[:4]).max() <= DELTA
    assert got.converged.all()


def test_converged_means_certified_within_delta(net, pool, oracle) -> None:
    """Stopped by max_iter before the bound tightens: converged is False, and says so."""
    s = ScoreSettings(k=K, tol="rank", solver="lanczos", config=SolverConfig(max_iter=2))
    with pytest.warns(NotConvergedWarning, match="not certified within rank_delta"):
        early = score(net, pool, settings=s, progress=False)
    assert not early.converged.any()
    s = s.replace(batch_size=12)  # one batch: each sample's certificate at the same step
    for it in (12, 15):  # some samples certified, some not
        s = s.replace(config=SolverConfig(max_iter=it))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)
            t = score(net, pool, settings=s, progress=False)
        ok = t.converged
        assert 0 < ok.sum() < len(ok), ok
        assert (np.abs(t.rpr - oracle.rpr)[ok] <= DELTA).all(), "certified rows are within δ"


def test_rank_settings_are_validated_and_keyed(net) -> None:
    with pytest.raises(ValueError, match="tol must be a finite float > 0 or 'rank', got 'fast'"):
        ScoreSettings(tol="fast")
    with pytest.raises(TypeError, match="tol must be a float or 'rank', got list"):
        ScoreSettings(tol=[1e-4])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rank_delta must be a float, got str"):
        ScoreSettings(tol="rank", rank_delta="0.1")  # type: ignore[arg-type]
    for bad in (0.0, 1.0, -0.1, 2):
        with pytest.raises(ValueError, match=f"rank_delta must be in \\(0, 1\\), got {bad}"):
            ScoreSettings(tol="rank", rank_delta=bad)
    for solver in ("dense", "slepc"):
        with pytest.raises(ValueError, match=f"tol='rank' needs solver .* got solver='{solver}'"):
            ScoreSettings(tol="rank", solver=solver)
    a = ScoreSettings(tol="rank", rank_delta=0.01).fingerprint(net)
    b = ScoreSettings(tol="rank", rank_delta=0.02).fingerprint(net)
    c = ScoreSettings().fingerprint(net)
    assert a != b and a["settings"]["rank_delta"] == 0.01 and a["settings"]["tol"] == "rank"
    assert "rank_delta" not in c["settings"], "numeric-tol cache keys are unchanged"
    assert c == ScoreSettings(rank_delta=0.5).fingerprint(net), "ignored without tol='rank'"


def test_stop_rule_needs_a_lanczos_solver(net, pool) -> None:
    from rprselect.solvers.ranking import RankStop

    X = pool[:2]
    for solver in ("dense", "slepc"):
        with pytest.raises(ValueError, match=f"stop .* needs solver .* got solver='{solver}'"):
            rprselect.svd_batch(net, X, k=K, solver=solver, stop=RankStop(X, DELTA))
    rule = RankStop(X, DELTA)
    res = rprselect.svd_batch(net, X, k=K, solver="lanczos", stop=rule)
    assert res.stop_reason == "callback" and rule.steps > 0
    exact = rprselect.svd_batch(net, X, k=K, solver="dense")
    rpr_exact = rprselect.rpr(exact, X)[:, -1]
    assert ((rule.lower <= rpr_exact + 1e-12) & (rpr_exact <= rule.upper + 1e-12)).all()


def test_cli_tol_rank(tmp_path: Path, capsys) -> None:
    from cli_models import tiny_seg3d

    folder = tmp_path / "pool"
    folder.mkdir()
    X = np.random.default_rng(0).random((4, 1, 6, 6, 6))
    for i, x in enumerate(X):
        np.save(folder / f"v{i}.npy", x)
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", "cli_models:tiny_seg3d", "--pool", str(folder), "--out", str(out)]
    argv += ["--k", "3", "--no-progress", "--tol", "rank"]
    assert main(argv) == 0, capsys.readouterr().err
    t = ScoreTable.from_csv(out)
    want = score(tiny_seg3d(), torch.from_numpy(X).float(), k=3, solver="dense", progress=False)
    got = dict(zip(t.ids, t.rpr, strict=True))
    for i, r in enumerate(want.rpr):
        assert abs(got[f"v{i}.npy"] - r) <= DELTA
    assert t.converged.all()
    assert main([*argv[:-1], "fast"]) == 2
    assert "must be a number > 0 or 'rank', got 'fast'" in capsys.readouterr().err


def test_rank_delta_reaches_the_settings_from_score_and_the_cli(tmp_path: Path, capsys) -> None:
    """``score(rank_delta=...)`` and ``--rank-delta`` set the certified accuracy: a coarser δ
    lands in the cache key and keeps every RPR within that δ of the dense oracle."""
    from cli_models import tiny_seg3d

    X = torch.from_numpy(np.random.default_rng(1).random((3, 1, 6, 6, 6))).float()
    want = score(tiny_seg3d(), X, k=3, solver="dense", progress=False)
    cache = tmp_path / "c.jsonl"
    got = score(tiny_seg3d(), X, k=3, tol="rank", rank_delta=0.05, cache=str(cache), progress=False)
    assert np.all(np.abs(got.rpr - want.rpr) <= 0.05)
    assert '"rank_delta": 0.05' in cache.read_text().splitlines()[0]
    with pytest.raises(ValueError, match="rank_delta"):
        score(tiny_seg3d(), X, k=3, tol="rank", rank_delta=1.5, progress=False)
    folder = tmp_path / "pool"
    folder.mkdir()
    for i, x in enumerate(X.numpy()):
        np.save(folder / f"v{i}.npy", x)
    out = tmp_path / "s.csv"
    argv = ["score", "--model", "cli_models:tiny_seg3d", "--pool", str(folder), "--out", str(out)]
    argv += ["--k", "3", "--no-progress", "--tol", "rank", "--rank-delta", "0.05"]
    assert main(argv) == 0, capsys.readouterr().err
    t = ScoreTable.from_csv(out)
    got_cli = dict(zip(t.ids, t.rpr, strict=True))
    assert all(abs(got_cli[f"v{i}.npy"] - r) <= 0.05 for i, r in enumerate(want.rpr))
