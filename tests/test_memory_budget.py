"""The memory budget: parsing, the Lanczos basis that fits, and the sliding-window plan."""

from __future__ import annotations

import pytest
import torch

import rprselect
from rprselect.models import PocketUNet
from rprselect.solvers import SolverConfig
from rprselect.solvers.lanczos import lanczos_svd
from rprselect.solvers.memory import parse_memory, plan_memory, storage_for_budget, window_costs
from rprselect.solvers.result import measured_residuals


def test_parse_memory() -> None:
    assert parse_memory("8GB") == 8 * 2**30 == parse_memory("8 GiB") == parse_memory("8g")
    assert parse_memory("512MiB") == 512 * 2**20 and parse_memory(1000) == 1000
    assert parse_memory("2.5G") == int(2.5 * 2**30)
    for bad in ("lots", "-1GB", "0", 0):
        with pytest.raises(ValueError, match="max_memory must"):
            parse_memory(bad)
    with pytest.raises(TypeError, match="max_memory must be an int"):
        parse_memory(8.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_memory must look like"):
        SolverConfig(max_memory="8 parsecs")


def test_lanczos_basis_shrinks_to_the_budget_and_gives_the_same_answer() -> None:
    torch.manual_seed(0)
    net = PocketUNet(2, 2, dims=2, depth=2, filters=4).double().eval()
    X = torch.rand(1, 2, 16, 16, dtype=torch.float64)
    m = n = 2 * 16 * 16
    k = 4
    free = lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-10, SolverConfig())
    budget = 8 * (k + 8) * (m + n) + 2 * 8 * (m + n)  # room for ncv = k + 7 with b = 1
    tight = lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-10,
                        SolverConfig(max_memory=budget))  # fmt: skip
    torch.testing.assert_close(tight.S, free.S, rtol=1e-9, atol=0)
    assert bool(tight.converged.all()) and tight.n_products >= free.n_products
    with pytest.raises(ValueError, match="max_memory=.*below the smallest rank-4"):
        lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-10, SolverConfig(max_memory=1000))


def test_a_float32_network_stores_its_bases_in_float32_before_the_basis_shrinks() -> None:
    """Between the float32 and the float64 need at the default basis, a float32 network keeps
    its basis size (same products) with float32-stored bases; a float64 network shrinks it."""
    torch.manual_seed(0)
    net = PocketUNet(2, 2, dims=2, depth=2, filters=4).eval()
    X = torch.rand(1, 2, 16, 16)
    m = n = 2 * 16 * 16
    k, ncv = 4, 20
    block = 2 * 1 * (m + n) * 4
    budget = 6 * (ncv + 1) * (m + n) + block  # float32 bases fit, float64 ones do not
    assert storage_for_budget(budget, ncv, 1, 1, m, n, torch.float32, "float64") == "float32"
    assert storage_for_budget(budget, ncv, 1, 1, m, n, torch.float64, "float64") == "float64"
    roomy = 8 * (ncv + 1) * (m + n) + block
    assert storage_for_budget(roomy, ncv, 1, 1, m, n, torch.float32, "float64") == "float64"
    free = lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-4, SolverConfig(ncv=ncv))
    tight = lanczos_svd(rprselect.linearize_batch(net, X), k, 1e-4,
                        SolverConfig(ncv=ncv, max_memory=budget))  # fmt: skip
    assert tight.n_products == free.n_products and bool(tight.converged.all())
    torch.testing.assert_close(tight.S, free.S, rtol=1e-6, atol=0)
    measured = measured_residuals(
        rprselect.linearize_batch(net, X), tight.U.reshape(1, k, -1), tight.S,
        tight.V.reshape(1, k, -1),
    )  # fmt: skip
    # both sides of float32 product rounding (the solver adds 8 eps_32 sigma_1 in quadrature)
    torch.testing.assert_close(measured, tight.residuals, rtol=0.05, atol=2e-6)


def test_window_costs_count_the_recording_and_the_activations() -> None:
    torch.manual_seed(0)
    net = PocketUNet(2, 2, dims=3, depth=2, filters=4).eval()
    r8, a8 = window_costs(net, torch.randn(2, 8, 8, 8))
    r16, a16 = window_costs(net, torch.randn(2, 16, 16, 16))
    assert r8 > 0 and a8 > 4 * 8**3 * 4  # at least the first layer's output
    assert 6 < a16 / a8 <= 8.01  # activations scale with the voxels
    assert r16 > r8


def test_sliding_plan_fits_the_budget_or_names_the_terms() -> None:
    n, m = 4 * 240 * 240 * 155, 2 * 240 * 240 * 155
    plan = plan_memory("8GB", n=n, m=m, k=10, record_bytes=50 * 2**20, pass_bytes=400 * 2**20,
                       n_windows=18)  # fmt: skip
    assert plan.predicted_bytes <= 8 * 2**30
    assert plan.ncv < 26 and plan.ncv >= 11 and plan.sw_batch_size >= 1  # bases had to shrink
    roomy = plan_memory("64GB", n=n, m=m, k=10, record_bytes=50 * 2**20,
                        pass_bytes=400 * 2**20, n_windows=18)  # fmt: skip
    assert roomy.ncv == 26 and roomy.sw_batch_size == 18
    with pytest.raises(ValueError, match="records .* GiB"):
        plan_memory("8GB", n=n, m=m, k=10, record_bytes=2**30, pass_bytes=2**28, n_windows=18)
