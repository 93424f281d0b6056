"""Streaming sliding windows (recorded again per product) and scoring within a memory budget."""

from __future__ import annotations

import pytest
import torch

import rprselect
from rprselect import ScoreSettings, SolverConfig
from rprselect.engine import Engine
from rprselect.models import PocketUNet
from rprselect.scoring import score
from rprselect.sliding import sliding_window_operator, window_grid
from rprselect.solvers.memory import plan_memory, plan_sliding, window_costs
from rprselect.solvers.result import measured_residuals


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return PocketUNet(2, 2, dims=3, depth=2, filters=4).double().eval()


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    x = torch.rand(2, 14, 12, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:, :8, :8] = 0  # all-zero windows in the grid
    return x


@pytest.mark.parametrize("mode,sw", [("constant", 1), ("gaussian", 3)])
def test_streaming_operator_equals_the_recorded_one(net, volume, mode, sw) -> None:
    kw = dict(roi_size=(8, 8, 8), overlap=0.5, mode=mode, sw_batch_size=sw)
    rec = sliding_window_operator(net, volume, **kw)
    st = sliding_window_operator(net, volume, stream=True, **kw)
    assert rec.n_windows == st.n_windows > 4 and st.n_zero_windows == rec.n_zero_windows >= 1
    assert st.window_ops == [] and len(rec.window_ops) >= 2
    torch.testing.assert_close(st.output, rec.output, rtol=0, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    Y = torch.randn(3, *st.in_shape, generator=g, dtype=torch.float64)
    Z = torch.randn(3, *st.out_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(st.matmat(Y), rec.matmat(Y), rtol=0, atol=1e-12)
    torch.testing.assert_close(st.rmatmat(Z), rec.rmatmat(Z), rtol=0, atol=1e-12)
    assert st.n_products == rec.n_products == 6 and st.n_passes == rec.n_passes == 2
    # the dot-product test <A y, z> = <y, A^T z> on the streaming operator
    lhs = (st.matmat(Y) * Z).sum((1, 2, 3, 4))
    rhs = (Y * st.rmatmat(Z)).sum((1, 2, 3, 4))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_stream_must_be_a_bool(net, volume) -> None:
    with pytest.raises(TypeError, match="stream must be a bool, got str 'yes'"):
        sliding_window_operator(net, volume, roi_size=8, stream="yes")  # type: ignore[arg-type]


def test_scoring_within_a_budget_streams_and_gives_the_oracle_rpr(net, volume) -> None:
    k, roi = 3, (8, 8, 8)
    window = {"roi_size": roi, "overlap": 0.5}
    r_w, a_w = window_costs(net, torch.rand(2, *roi, dtype=torch.float64))
    n_win = len(window_grid(volume.shape[1:], roi, 0.5).windows)
    n = m = volume.numel()
    ncv = max(2 * k + 2, k + 16)
    # room for the default basis and two windows' recordings and passes, not for all of them
    budget = 8 * (ncv + 1) * (m + n) + 2 * 8 * (m + n) + 2 * (r_w + a_w) + 1000
    assert n_win * r_w > 2 * (r_w + a_w)
    plan = plan_sliding(net, volume, window, k, budget)
    assert plan.stream and plan.sw_batch_size == 2 and plan.ncv == ncv
    assert plan.predicted_bytes <= budget
    s = ScoreSettings(k=k, tol=1e-10, roi_size=roi, sliding={"overlap": 0.5})
    eng = Engine(net, s.replace(config=SolverConfig(max_memory=budget)))
    row = eng.score_batch(volume[None], [0])[0]
    assert [p.stream for p in eng._plans.values()] == [True]
    oracle = sliding_window_operator(net, volume, roi_size=roi, overlap=0.5)  # all recorded
    want = rprselect.rpr(rprselect.svd(oracle, k=k, tol=1e-10, solver="lanczos"), volume)
    torch.testing.assert_close(
        torch.tensor(row["rpr_curve"], dtype=torch.float64), want.double(), rtol=0, atol=1e-8
    )
    assert row["converged"]
    roomy = score(net, volume[None], k=k, tol=1e-10, roi_size=roi, sliding={"overlap": 0.5},
                  config=SolverConfig(max_memory="4GB"), progress=False)  # fmt: skip
    got = torch.tensor(roomy.rpr_curve[0], dtype=torch.float64)  # the table keeps float32
    torch.testing.assert_close(got, want.double(), rtol=0, atol=1e-6)
    eng = Engine(net, s.replace(config=SolverConfig(max_memory="4GB")))
    assert eng._plan(volume, dict(s.window or {})).sw_batch_size == n_win  # all in one pass
    assert not eng._plans[tuple(volume.shape)].stream


def test_user_sw_batch_size_caps_the_plan(net, volume) -> None:
    window = {"roi_size": (8, 8, 8), "overlap": 0.5, "sw_batch_size": 1}
    plan = plan_sliding(net, volume, window, 3, "4GB")
    assert plan.sw_batch_size == 1 and not plan.stream
    assert plan.terms["pass"] == window_costs(net, volume[:, -8:, -8:, -8:])[1]


def test_streaming_plan_names_the_terms_when_nothing_fits() -> None:
    with pytest.raises(ValueError, match=r"records 1\.00 GiB.*\(streaming\)"):
        plan_memory("4GB", n=10**8, m=10**8, k=10, record_bytes=2**30, pass_bytes=2**28,
                    n_windows=18, allow_stream=True)  # fmt: skip


def test_paper_case_plan_fits_8gb() -> None:
    """240x240x155, 4 channels, 128³ ROI, PocketUNet(4, 2, dims=3, depth=5, filters=32).

    The costs are measured on a 32³ window and scaled by (128/32)³: recordings and activations
    of a fully convolutional network grow with the voxels (the kernels do not, so this
    overestimates). Kept: 18 windows x ~1.4 GiB of recordings; the plan has to stream.
    """
    torch.manual_seed(0)
    paper = PocketUNet(4, 2, dims=3, depth=5, filters=32).eval()
    r32, a32 = window_costs(paper, torch.rand(4, 32, 32, 32))
    r_w, a_w = 64 * r32, 64 * a32
    n_win = len(window_grid((240, 240, 155), 128, 0.25).windows)
    vox = 240 * 240 * 155
    case = dict(n=4 * vox, m=2 * vox, k=10, record_bytes=r_w, pass_bytes=a_w, n_windows=n_win)
    assert n_win == 18 and n_win * r_w > 20 * 2**30  # all recordings: ~26 GiB
    with pytest.raises(ValueError, match="below the smallest rank-10"):
        plan_memory("8GB", **case)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(streaming\)"):  # float64 bases alone: >= 5.2 GiB
        plan_memory("8GB", allow_stream=True, **case)  # type: ignore[arg-type]
    plan = plan_memory("8GB", allow_stream=True, basis_bytes=(8, 4), **case)  # type: ignore[arg-type]
    assert plan.stream and plan.basis_dtype == "float32" and plan.sw_batch_size == 1
    assert plan.predicted_bytes <= 8 * 2**30 and plan.ncv >= 11
    assert plan.terms["records"] == r_w  # one window's recording alive, not 18
    roomy = plan_memory("64GB", allow_stream=True, basis_bytes=(8, 4), **case)  # type: ignore[arg-type]
    assert not roomy.stream and roomy.basis_dtype == "float64"


def test_float32_bases_agree_with_float64_to_their_rounding(net, volume) -> None:
    op = sliding_window_operator(net, volume, roi_size=8, overlap=0.5)
    f64 = rprselect.svd(op, k=3, tol=1e-10, solver="lanczos")
    f32 = rprselect.svd(op, k=3, tol=1e-4, solver="lanczos",
                        config=SolverConfig(basis_dtype="float32"))  # fmt: skip
    # stored in float32, computed in float64: the reported residuals are the measured ones
    assert f32.V.dtype == torch.float64 and bool(f32.converged.all())
    U, V = f32.U.reshape(1, 3, -1), f32.V.reshape(1, 3, -1)
    measured = measured_residuals(op, U, f32.S.reshape(1, 3), V).reshape(-1)
    torch.testing.assert_close(measured, f32.residuals.reshape(-1), rtol=0.05, atol=2e-6)
    torch.testing.assert_close(f32.S.double(), f64.S, rtol=1e-4, atol=0)
    rpr32, rpr64 = rprselect.rpr(f32, volume), rprselect.rpr(f64, volume)
    torch.testing.assert_close(rpr32.double(), rpr64.double(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="basis_dtype must be 'float64' or 'float32', got 'f16'"):
        SolverConfig(basis_dtype="f16")
