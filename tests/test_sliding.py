"""The sliding-window operator against MONAI's inferer, materialised with torch.func.jacrev."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import rprselect
from rprselect import sliding
from rprselect.sliding import importance_map, sliding_window_operator, window_grid


def _net(dims: int, c_in: int = 1, c_out: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return nn.Sequential(
        conv(c_in, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        conv(3, c_out, 3, padding=1, bias=False),
    ).double()


def _monai_inferer():
    monai_utils = pytest.importorskip(
        "monai.inferers.utils", reason="MONAI is the oracle here: pip install 'rprselect[monai]'"
    )
    return monai_utils.sliding_window_inference


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    err = (actual - expected).abs()
    scale = expected.abs().max().clamp_min(1e-300)
    worst = int(err.argmax())
    assert float(err.max()) <= tol * float(scale), (
        f"{what}: max |diff| {float(err.max()):.3e} (relative {float(err.max() / scale):.3e}) "
        f"at flat index {worst}: got {float(actual.flatten()[worst])}, "
        f"expected {float(expected.flatten()[worst])}"
    )


# (dims, sample shape, roi, overlap, mode, padding_mode): 3-D and 2-D, padded and not.
CASES = {
    "3d-constant": (3, (1, 6, 7, 5), (4, 4, 4), 0.25, "constant", "constant"),
    "3d-gaussian-padded": (3, (1, 3, 7, 5), (4, 4, 4), 0.25, "gaussian", "constant"),
    "2d-gaussian": (2, (2, 12, 10), (8, 8), 0.5, "gaussian", "constant"),
    "2d-replicate-padded": (2, (1, 5, 11), (8, 6), 0.25, "constant", "replicate"),
    "2d-reflect-padded": (2, (1, 6, 9), (8, 8), 0.4, "gaussian", "reflect"),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    dims, shape, roi, overlap, mode, pad = CASES[request.param]
    net = _net(dims, c_in=shape[0])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = sliding_window_operator(
        net, x, roi, overlap=overlap, mode=mode, sw_batch_size=3, padding_mode=pad
    )
    return net, x, op, dict(roi_size=roi, overlap=overlap, mode=mode, padding_mode=pad)


@pytest.fixture(scope="module")
def oracle(case):
    """MONAI's output and its Jacobian, once per case."""
    net, x, _, opts = case
    return _oracle(net, x, opts)


def _oracle(net, x, opts):
    infer = _monai_inferer()

    def f(v: torch.Tensor) -> torch.Tensor:
        return infer(
            v[None],
            opts["roi_size"],
            3,
            net,
            overlap=opts["overlap"],
            mode=opts["mode"],
            padding_mode=opts["padding_mode"],
        )[0]

    with torch.no_grad():
        out = f(x)
    J = torch.func.jacrev(f)(x).detach()
    return out, J.reshape(out.numel(), x.numel())


class TestAgainstMonai:
    def test_output_is_monai_output(self, case, oracle):
        _, _, op, _ = case
        out, _ = oracle
        assert op.out_shape == tuple(out.shape)
        _assert_close(op.output, out, 1e-12, "stitched F(x) vs sliding_window_inference")

    def test_dense_matches_jacrev_of_monai(self, case, oracle):
        _, _, op, _ = case
        _, J = oracle
        _assert_close(op.dense(), J, 1e-10, "A[x] vs jacrev(sliding_window_inference)")

    def test_truncated_svd_matches_dense_svd_of_oracle(self, case, oracle):
        _, x, op, _ = case
        _, J = oracle
        result = rprselect.svd(op, k=5, tol=1e-9, solver="lanczos")
        U, S, Vh = torch.linalg.svd(J)
        _assert_close(result.S.double(), S[:5], 1e-8, "Lanczos singular values vs LAPACK")
        expected_rpr = (Vh[:5] @ x.flatten()).pow(2).cumsum(0) / x.pow(2).sum()
        _assert_close(rprselect.rpr(result, x), expected_rpr, 1e-6, "RPR vs dense oracle")


def test_adjoint_and_homogeneity(case):
    _, x, op, _ = case
    assert rprselect.check_adjoint(op, n_trials=4) < 1e-13
    _assert_close(op.matvec(x), op.output, 1e-12, "A[x] x vs F(x) (bias-free network)")


def test_counts_products_and_groups_windows():
    x = torch.randn(1, 12, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    net = _net(2)
    one = sliding_window_operator(net, x, 8, overlap=0.5, sw_batch_size=1)
    all_ = sliding_window_operator(net, x, 8, overlap=0.5, sw_batch_size=16)
    assert one.n_windows == all_.n_windows == 4
    assert len(one.window_ops) == 4 and len(all_.window_ops) == 1
    Y = torch.randn(3, *x.shape, dtype=torch.float64)
    _assert_close(one.matmat(Y), all_.matmat(Y), 1e-13, "sw_batch_size=1 vs 16")
    assert all_.n_products == 3 and all_.window_ops[0].n_products == 3 * 4
    assert all_.window_ops[0].n_passes == 1


def test_all_zero_windows_have_a_zero_block():
    x = torch.zeros(1, 12, 10, dtype=torch.float64)
    x[:, :3] = torch.rand(1, 3, 10, generator=torch.Generator().manual_seed(3)) + 0.1
    net = _net(2)
    op = sliding_window_operator(net, x, 8, overlap=0.5)
    assert op.n_zero_windows == 2  # the windows starting at row 4 see only zeros
    opts = dict(roi_size=(8, 8), overlap=0.5, mode="constant", padding_mode="constant")
    out, J = _oracle(net, x, opts)
    _assert_close(op.output, out, 1e-12, "F(x) with zero windows")
    _assert_close(op.dense(), J, 1e-10, "A[x] with zero windows")
    assert rprselect.check_adjoint(op) < 1e-13


@pytest.mark.parametrize(
    "image, roi, overlap",
    [
        ((12, 12, 10), (8, 8, 8), 0.25),
        ((6, 7, 5), (4, 4, 4), 0.5),
        ((3, 20), (4, -1), 0.7),
        ((64, 30), (16, 16), 0.0),
        ((9,), (9,), 0.25),
        ((7, 7), (3, 5), (0.1, 0.6)),
    ],
)
def test_window_grid_is_monai_grid(image, roi, overlap):
    utils = pytest.importorskip("monai.inferers.utils", reason="needs MONAI")
    from monai.data.utils import dense_patch_slices
    from monai.utils import ensure_tuple_rep, fall_back_tuple

    grid = window_grid(image, roi, overlap)
    roi_m = fall_back_tuple(roi, image)
    padded = tuple(max(i, r) for i, r in zip(image, roi_m, strict=True))
    interval = utils._get_scan_interval(
        padded, roi_m, len(image), ensure_tuple_rep(overlap, len(image))
    )
    assert grid.padded_size == padded and grid.scan_interval == interval
    assert list(grid.windows) == dense_patch_slices(padded, roi_m, interval)


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("roi, sigma", [((8, 8, 8), 0.125), ((5, 9), (0.3, 0.05)), ((7,), 1.0)])
def test_importance_map_is_monai_map(mode, roi, sigma):
    pytest.importorskip("monai", reason="needs MONAI")
    from monai.data.utils import compute_importance_map

    ours = importance_map(roi, mode, sigma, dtype=torch.float64)
    theirs = compute_importance_map(roi, mode=mode, sigma_scale=sigma, dtype=torch.float64)
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(overlap=1.0), "overlap"),
        (dict(mode="linear"), "mode"),
        (dict(padding_mode="edge"), "padding_mode"),
        (dict(sw_batch_size=0), "sw_batch_size"),
        (dict(roi_size=(8, 8, 8)), "roi_size"),
        (dict(roi_size=2.5), "roi_size"),
        (dict(mode="gaussian", sigma_scale=0.0), "sigma_scale"),
    ],
)
def test_rejects_bad_options(kwargs, match):
    x = torch.rand(1, 12, 10, dtype=torch.float64)
    args = dict(roi_size=8) | kwargs
    with pytest.raises(ValueError, match=match):
        sliding_window_operator(_net(2), x, **args)


def test_rejects_bad_inputs():
    net = _net(2)
    with pytest.raises(ValueError, match="all zeros"):
        sliding_window_operator(net, torch.zeros(1, 12, 10, dtype=torch.float64), 8)
    with pytest.raises(TypeError, match="floating-point"):
        sliding_window_operator(net, torch.ones(1, 12, 10, dtype=torch.int64), 8)
    with pytest.raises(TypeError, match="model"):
        sliding_window_operator("net", torch.ones(1, 12, 10), 8)  # type: ignore[arg-type]
    shrink = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, bias=False)).double()
    with pytest.raises(ValueError, match="spatial size"):
        sliding_window_operator(shrink, torch.rand(1, 12, 10, dtype=torch.float64), 8)


def test_docstring_examples():
    failures, tried = doctest.testmod(sliding, extraglobs={"torch": torch, "nn": nn})
    assert tried > 0 and failures == 0
