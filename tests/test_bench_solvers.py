"""``rprselect bench solvers``: smoke run, ranking mode, trace once, reference and targets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import rprselect
from rprselect.benchmarks import solvers, throughput
from rprselect.layers import SumPool
from rprselect.linearize import prepare_graph
from rprselect.models import MNISTNet, PocketUNet


def _has_slepc() -> bool:
    try:
        from rprselect.solvers.slepc import import_slepc

        import_slepc()
    except ImportError:
        return False
    return True


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        SumPool(2),
        nn.Conv2d(4, 2, 3, padding=1, bias=False),
    ).eval()


def test_smoke_run_writes_json_markdown_and_png(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert solvers.main(["--smoke", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("machine", "settings", "rows", "p2", "throughput", "targets", "seconds"):
        assert key in results, key
    rows = {(r["case"], r["config"]): r for r in results["rows"]}
    assert rows[("mnist", "lanczos-b1")]["status"] == "ok"
    assert rows[("mnist", "dense")]["products"] == 10  # m = 10: one product per output
    assert rows[("unet8", "dense")]["status"] == "skipped"  # over the smoke's --dense-limit
    for (_, config), row in rows.items():
        if config == "reference" or config.startswith("slepc"):
            assert row["status"] == ("ok" if _has_slepc() else "skipped"), row
        if row["status"] == "ok":
            assert row["converged"] and row["max_residual"] <= 1e-4
            assert row["peak_bytes"] >= 0 and row["seconds"] > 0
    if _has_slepc():  # every solver finds the same RPR as the paper's method
        assert all(r["d_rpr_rel"] < 1e-3 for r in results["rows"] if "d_rpr_rel" in r)
    report = (tmp_path / "report.md").read_text()
    assert "| case | config | wall s |" in report and "## Targets" in report
    vol = results["throughput"]["volumes"]
    assert vol["n"] == 10 and 0 < vol["rank_products"] and vol["rank_max_half_width"] <= 1e-2
    ids = [t["id"] for t in results["targets"]]
    assert ids[0] == "P1" and ids[-3:] == ["P2", "P3", "P4"]
    trace = results["throughput"]["trace_once_mnist"]
    assert trace["traces_fresh"] == trace["batches"] and trace["traces_once"] == 1
    assert "## Trace once" in report
    assert (tmp_path / "solvers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert solvers.main(["--configs", "lanczos-b3", "--out", "/nonexistent/x"]) == 2
    assert "--configs must be among" in capsys.readouterr().err
    assert solvers.main(["--sizes", "30", "--out", "/nonexistent/x"]) == 2


def test_rank_scores_match_the_converged_ranking_within_delta() -> None:
    torch.manual_seed(1)
    net = PocketUNet(2, 2, dims=2, depth=2, filters=4).double().eval()
    X = torch.rand(4, 2, 8, 8, dtype=torch.float64)
    exact = rprselect.rpr(rprselect.svd_batch(net, X, k=3, tol=1e-10, solver="dense"), X)[:, -1]
    rank, half, reasons, products = throughput.rank_scores(
        net, X, k=3, delta=1e-2, tol=1e-12, batch_size=2
    )
    assert reasons == ["callback", "callback"]
    assert products < 2 * 128  # a full Krylov basis would take 2 n products
    assert np.all(np.abs(rank - exact.numpy()) <= half + 1e-12) and np.all(half <= 1e-2)


def test_score_pool_traces_once_with_a_graph() -> None:
    net = _tiny_net()
    X = torch.rand(6, 1, 8, 8)
    cfg = rprselect.SolverConfig()
    fresh, _, traces, _ = throughput.score_pool(net, X, 3, 1e-6, 2, cfg, None)
    graph = prepare_graph(net)
    once, _, traces_once, products = throughput.score_pool(net, X, 3, 1e-6, 2, cfg, graph)
    assert (traces, traces_once) == (3, 0)  # one per batch, then none
    np.testing.assert_allclose(once, fresh, rtol=1e-6)
    assert products > 0
    out = throughput.trace_once(net, X, 3, 1e-6, 2, cfg, repeats=1)
    assert (out["traces_fresh"], out["traces_once"], out["batches"]) == (3, 1, 3)
    assert out["same_rpr"] and out["ratio"] > 0


@pytest.mark.skipif(not _has_slepc(), reason="slepc4py is not installed (rprselect[slepc])")
def test_reference_matches_the_dense_svd() -> None:
    from rprselect.benchmarks.reference import reference_svd

    net = _tiny_net().double()
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    ref = reference_svd(net, x, k=4, tol=1e-8)
    exact = rprselect.svd(net, x, k=4, solver="dense")
    assert ref.n_converged >= 4 and ref.n_products == ref.n_passes > 0
    np.testing.assert_allclose(ref.S, exact.S.numpy(), rtol=1e-6)
    V = exact.V.reshape(4, -1).numpy()
    # same right singular subspace: |<v_ref, v_exact>| = 1 for each (distinct) value
    np.testing.assert_allclose(np.abs((ref.V * V).sum(1)), 1.0, atol=1e-6)


def test_mc_dropout_is_stochastic_and_restores_modes() -> None:
    torch.manual_seed(0)
    net = PocketUNet(2, 3, dims=2, depth=2, filters=4).eval()
    X = torch.rand(2, 2, 8, 8)
    with throughput.mc_dropout(net, p=0.5) as how:
        assert how == "hooks"
        with torch.no_grad():
            assert not torch.equal(net(X), net(X))
    with torch.no_grad():
        assert torch.equal(net(X), net(X))  # hooks removed
    H = throughput.mc_dropout_entropy(net, X, T=4)
    assert H.shape == (2,) and bool(((H >= 0) & (H <= math.log(3) + 1e-9)).all())
    mnist = MNISTNet(dropout=0.5).train()
    with throughput.mc_dropout(mnist) as how:
        assert how == "modules" and mnist.drop1 is not None and mnist.drop1.training
        assert not mnist.conv1.training
    assert mnist.training and mnist.conv1.training  # restored


def test_peak_memory_sees_an_allocation() -> None:
    mem = solvers.PeakMemory("cpu")
    mem.reset()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert float(block.sum()) > 0
    del block
    assert mem.peak() >= 48 * 2**20


def _row(case: str, config: str, seconds: float, **kw: object) -> dict[str, object]:
    base = {"case": case, "config": config, "status": "ok", "seconds": seconds, "converged": True}
    return {**base, **kw}


def test_targets_are_judged_from_the_ratios() -> None:
    rows = [
        _row("unet64", "reference", 100.0, n_samples=1),
        _row("unet64", "slepc-cross", 20.0, d_rpr=1e-9, speedup=5.0, products=240),
        _row("unet64", "lanczos-b1", 10.0, d_rpr=1e-5, speedup=10.0, peak_bytes=50,
             forward_peak_bytes=20, products=226),
        _row("unet64", "lanczos-b4", 5.0, d_rpr=1e-2, speedup=20.0, peak_bytes=90,
             forward_peak_bytes=20),  # faster but off in RPR: not eligible for P1
        _row("unet64-trained", "reference", 50.0, n_samples=1),
        _row("unet64-trained", "lanczos-b1", 25.0, d_rpr=1e-5, speedup=2.0, products=100),
        _row("mnist", "reference", 20.0, n_samples=200),
    ]  # fmt: skip
    results = {
        "rows": rows,
        "p2": {"images": 10_000, "scoring_seconds": 2.0, "epoch_seconds": 1.0},
        "throughput": {
            "volumes": {"spearman_rank_vs_tol": 0.995, "same_top10": True, "rank_products": 30,
                        "rpr_products": 100, "rank_seconds": 30.0, "mc_seconds": 10.0}
        },
    }  # fmt: skip
    args = SimpleNamespace(pool_size=64, mc_passes=20)
    got = solvers.targets(results, args)
    p1 = [t for t in got if t["id"] == "P1"]
    assert [t["ok"] for t in p1] == [True, False]  # random 10x, trained 2x
    assert "10.00x (lanczos-b1" in p1[0]["measured"]
    assert "fastest lanczos-b4 20.00x but abs ΔRPR 1.0e-02" in p1[0]["measured"]
    lz = next(t for t in got if t["id"] == "P1-L")
    assert lz["ok"] is True and lz["ratio"] == pytest.approx(0.5)
    by = {t["id"]: t for t in got}
    assert by["P2"]["ratio_reference"] == pytest.approx(20.0 / 200 * 10_000 / 2.0)
    assert by["P2"]["ok"] is True  # 2x one epoch
    assert by["P3"]["ok"] is True and by["P3"]["ratio_mc"] == pytest.approx(3.0)
    assert by["P3"]["ratio_products"] == pytest.approx(0.3)
    assert by["P4"]["ok"] is True and by["P4"]["ratio"] == pytest.approx(2.5)
