"""The adjoint pass's fast paths (issue 13, target P2) against the paths they replace and the
float64 jacrev oracle: the fused SumPool+ReLU adjoint, the one-input-channel convolution adjoint
as a matrix product, and the dense solver's vectors per pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from dense_oracle import jacobian

import rprselect.solvers.dense as dense
from rprselect import check_adjoint, linearize_batch
from rprselect.adjoint_kernels import (
    conv_adjoint_fft,
    conv_adjoint_matmul,
    conv_spectrum,
    fft_size,
    upsample_mask,
)
from rprselect.models import MNISTNet
from rprselect.rules import Conv, _per_sample, _upsample_nearest
from rprselect.solvers import SolverConfig, svd_batch

CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@pytest.mark.parametrize("d,k", [(1, 2), (2, 2), (2, 3), (3, 2)])
def test_upsample_mask_equals_upsample_then_mask(d: int, k: int) -> None:
    g = torch.Generator().manual_seed(d * 10 + k)
    B, b, C = 3, 2, 4
    n = (5, 3, 2)[:d]
    z = torch.randn(b * B, C, *n, generator=g, dtype=torch.float64)
    slope = torch.where(
        torch.randn(B, C, *(m * k for m in n), generator=g, dtype=torch.float64) > 0, 1.0, 0.1
    ).to(torch.float64)
    want = _per_sample(_upsample_nearest(z, k), slope)
    got = upsample_mask(z, k, slope)
    assert got.shape == want.shape
    assert torch.equal(got, want)  # the same single products, no rounding difference


CONV_CASES: dict[str, dict[str, Any]] = {
    "mnist-conv1": dict(spatial=(12, 10), c_in=1, c_out=6, k=5, padding=2, dilation=1),
    "valid": dict(spatial=(9, 8), c_in=1, c_out=3, k=3, padding=0, dilation=1),
    "dilated": dict(spatial=(9, 9), c_in=2, c_out=3, k=3, padding=2, dilation=2),
    "wide-pad": dict(spatial=(6, 7), c_in=1, c_out=2, k=3, padding=3, dilation=1),
    "1d": dict(spatial=(11,), c_in=1, c_out=4, k=5, padding=1, dilation=1),
    "3d": dict(spatial=(5, 4, 6), c_in=2, c_out=3, k=3, padding=1, dilation=1),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_adjoint_matmul_equals_conv_transpose(name: str, dtype: torch.dtype) -> None:
    c = CONV_CASES[name]
    spatial, d = c["spatial"], len(c["spatial"])
    g = torch.Generator().manual_seed(1)
    w = torch.randn(c["c_out"], c["c_in"], *([c["k"]] * d), generator=g, dtype=dtype)
    x = torch.randn(5, c["c_in"], *spatial, generator=g, dtype=dtype)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    y = conv(x, w, None, 1, c["padding"], c["dilation"])
    z = torch.randn(y.shape, generator=g, dtype=dtype)
    pad, dil = (c["padding"],) * d, (c["dilation"],) * d
    got = conv_adjoint_matmul(z, w, pad, dil, spatial)
    out_pad = tuple(
        n - ((o - 1) - 2 * c["padding"] + c["dilation"] * (c["k"] - 1) + 1)
        for n, o in zip(spatial, y.shape[2:], strict=True)
    )
    want = CONV_T[d](z, w, None, 1, c["padding"], out_pad, 1, c["dilation"])
    assert got.shape == x.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    # the dot-product test: <conv(x), z> = <x, A^T z>
    lhs, rhs = (y * z).sum().double(), (x * got).sum().double()
    assert abs(float(lhs - rhs)) <= tol * float(y.norm() * z.norm())


def test_conv_rule_takes_the_matmul_path_for_one_input_channel() -> None:
    w = torch.randn(32, 1, 5, 5, generator=torch.Generator().manual_seed(3))
    rule = Conv("conv1", (1, 28, 28), w, 1, 2, 1, 1)
    assert rule.use_matmul
    assert not Conv("c", (2, 28, 28), torch.randn(4, 2, 5, 5), 1, 2, 1, 1).use_matmul
    assert not Conv("c", (1, 28, 28), w, 2, 2, 1, 1).use_matmul  # strided
    z = torch.randn(7, 32, 28, 28, generator=torch.Generator().manual_seed(4))
    want = F.conv_transpose2d(z, w, None, 1, 2)
    got = rule.adjoint(z)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def _mnist(dtype: torch.dtype) -> tuple[MNISTNet, torch.Tensor]:
    torch.manual_seed(0)
    model = MNISTNet(dropout=0.25, in_size=8).to(dtype).eval()
    X = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=dtype)
    return model, X


def test_mnistnet_fused_adjoint_against_jacrev_oracle() -> None:
    model, X = _mnist(torch.float64)
    op = linearize_batch(model, X)
    assert sorted(op.adjoint_network._fused) == ["pool1", "pool2"]  # type: ignore[attr-defined]
    assert check_adjoint(op) < 1e-12
    A = dense.materialise(op)
    for i in range(X.shape[0]):
        J = jacobian(model, X[i])
        assert torch.allclose(A[i], J, rtol=1e-12, atol=1e-12 * float(J.abs().max()))
    # float32 network, same weights: the fast paths (oneDNN conv2, matmul conv1) to rounding
    op32 = linearize_batch(model.float(), X.float())
    A32 = dense.materialise(op32).double()
    assert torch.allclose(A32, A, rtol=1e-4, atol=1e-5 * float(A.abs().max()))
    assert check_adjoint(op32) < 1e-5


def test_dense_path_passes_in_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    model, X = _mnist(torch.float64)
    op = linearize_batch(model, X)
    whole = op.dense()
    per_vector = op.activation_numel * X.shape[0] * 8  # type: ignore[attr-defined]
    assert dense.vectors_per_pass(op, 10) == 10  # the default budget holds all ten here
    monkeypatch.setattr(dense, "PASS_BYTES", 3 * per_vector)
    assert dense.vectors_per_pass(op, 10) == 3
    op.n_passes = op.n_products = 0
    res = svd_batch(op, k=10, tol=1e-8, solver="dense", config=SolverConfig())
    assert res.n_passes == 4 and res.n_products == 10  # ceil(10 / 3) passes, 10 per sample
    A = dense.materialise(op)
    assert torch.allclose(A, whole, rtol=1e-13, atol=1e-13 * float(whole.abs().max()))
    S = torch.linalg.svdvals(whole)
    assert torch.allclose(res.S, S[:, :10], rtol=1e-12)


FFT_CASES: dict[str, dict[str, Any]] = {
    "mnist-conv2": dict(spatial=(14, 14), c_in=8, c_out=6, k=5, padding=2),
    "valid-odd": dict(spatial=(11, 9), c_in=3, c_out=4, k=5, padding=0),
    "7x7-wide-pad": dict(spatial=(8, 10), c_in=2, c_out=3, k=7, padding=4),
    "3d": dict(spatial=(7, 6, 5), c_in=2, c_out=3, k=5, padding=2),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(FFT_CASES))
def test_conv_adjoint_fft_equals_conv_transpose(name: str, dtype: torch.dtype) -> None:
    c = FFT_CASES[name]
    spatial, d, k, p = c["spatial"], len(c["spatial"]), c["k"], c["padding"]
    g = torch.Generator().manual_seed(6)
    w = torch.randn(c["c_out"], c["c_in"], *([k] * d), generator=g, dtype=dtype)
    x = torch.randn(4, c["c_in"], *spatial, generator=g, dtype=dtype)
    y = {2: F.conv2d, 3: F.conv3d}[d](x, w, None, 1, p)
    z = torch.randn(y.shape, generator=g, dtype=dtype)
    out, pad = tuple(y.shape[2:]), (p,) * d
    size = fft_size(out, (k,) * d, pad, spatial)
    got = conv_adjoint_fft(z, conv_spectrum(w, size), size, pad, spatial)
    out_pad = tuple(n - ((o - 1) - 2 * p + k) for n, o in zip(spatial, out, strict=True))
    want = CONV_T[d](z, w, None, 1, p, out_pad)
    assert got.shape == x.shape
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    lhs, rhs = (y * z).sum().double(), (x * got).sum().double()
    assert abs(float(lhs - rhs)) <= tol * float(y.norm() * z.norm())


def test_conv_rule_takes_the_fft_path_for_5x5_float32() -> None:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 32, 5, 5, generator=g) / 40
    rule = Conv("conv2", (32, 14, 14), w, 1, 2, 1, 1)
    assert rule.fft_size == (16, 16)
    assert Conv("c", (32, 14, 14), w.double(), 1, 2, 1, 1).fft_size is None  # float64: direct
    assert Conv("c", (32, 14, 14), torch.randn(64, 32, 3, 3), 1, 1, 1, 1).fft_size is None
    assert Conv("c", (8, 28, 28), torch.randn(16, 8, 5, 5), 1, 2, 1, 1).fft_size is None  # few
    z = torch.randn(6, 64, 14, 14, generator=g)
    got = rule.adjoint(z)[0]
    want = F.conv_transpose2d(z.double(), w.double(), None, 1, 2)
    direct = F.conv_transpose2d(z, w, None, 1, 2).double()
    err, err_direct = (got.double() - want).norm(), (direct - want).norm()
    assert err <= 2 * err_direct + 1e-7 * want.norm()  # as accurate as the direct convolution


@pytest.mark.parametrize("shape", [(3, 10, 784), (2, 50, 6), (2, 7, 9)])
def test_thin_svd_equals_lapack(shape: tuple[int, int, int]) -> None:
    A = torch.randn(*shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    A[0, 1] = 0.0 if shape[1] < shape[2] else A[0, 1]  # a rank-deficient sample
    U, S, Vh = dense.thin_svd(A)
    U0, S0, Vh0 = torch.linalg.svd(A, full_matrices=False)
    assert torch.allclose(S, S0, rtol=1e-12, atol=1e-12 * float(S0.max()))
    recon = U @ torch.diag_embed(S) @ Vh
    assert torch.allclose(recon, A, atol=1e-12 * float(A.abs().max()))
    r = min(shape[1:])
    eye = torch.eye(r, dtype=torch.float64)
    assert torch.allclose(U.transpose(1, 2) @ U, eye, atol=1e-13)
    assert torch.allclose(Vh @ Vh.transpose(1, 2), eye, atol=1e-13)
    # singular vectors of the distinct singular values agree with LAPACK's up to sign
    top = (U[..., 0] * U0[..., 0]).sum(-1).abs()
    assert torch.allclose(top, torch.ones_like(top), atol=1e-10)
