"""Dense-oracle tests of the core: A[x] from ``torch.func.jacrev`` and its LAPACK SVD against
``linearize`` (both methods), every SVD backend, RPR/LPR, homogeneity and the adjoint.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from dense_oracle import (
    Oracle,
    assert_close,
    jacobian,
    oracle_for,
    projection_ratios,
)
from torch import nn
from zoo import CASE_IDS, CASES, case_by_name

import rprselect
from rprselect import (
    AdjointCNN,
    AdjointFallbackWarning,
    NotHomogeneousWarning,
    SolverConfig,
    adjoint_cnn,
    check_adjoint,
    homogeneity_error,
    label_logits,
    linearize,
    linearize_batch,
    lpr,
    rpr,
    svd,
)

METHODS = ["adjoint", "autograd"]
pytestmark = [
    pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
]
# (solver, block size); slepc is added when slepc4py is importable.
SOLVERS = [("dense", 1), ("lanczos", 1), ("lanczos", 4)]


def _has_slepc() -> bool:
    try:
        rprselect.solvers.slepc.import_slepc()
    except ImportError:
        return False
    return True


SLEPC_REASON = "slepc4py is not installed (pip install 'rprselect[slepc]')"
SOLVER_PARAMS = [pytest.param(s, b, id=f"{s}-b{b}") for s, b in SOLVERS] + [
    pytest.param(
        "slepc", 1, id="slepc", marks=pytest.mark.skipif(not _has_slepc(), reason=SLEPC_REASON)
    )
]


def _linearize(o: Oracle, method: str) -> rprselect.LinearOperator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        return linearize(o.model, o.x, method=method)  # type: ignore[arg-type]


def _k(o: Oracle) -> int:
    return min(6, o.rank)


def _label_target(name: str, o: Oracle) -> torch.Tensor:
    """The LPR target: the ±2 label map of the predicted class, or a random output."""
    case = case_by_name(name)
    if case.num_classes is not None:
        return label_logits(int(o.output.argmax()), case.num_classes)
    g = torch.Generator().manual_seed(7)
    return torch.randn(o.out_shape, generator=g, dtype=torch.float64)


# -- (1) products against the Jacobian ---------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_products_match_jacobian(name: str, method: str) -> None:
    o = oracle_for(name)
    op = _linearize(o, method)
    m, n = o.J.shape
    assert op.shape == (m, n)
    assert op.in_shape == tuple(o.x.shape) and op.out_shape == o.out_shape
    g = torch.Generator().manual_seed(1)
    Y = torch.randn(3, *op.in_shape, generator=g, dtype=torch.float64)
    Z = torch.randn(3, *op.out_shape, generator=g, dtype=torch.float64)
    scale = float(o.J.abs().max())
    AY = op.matmat(Y).reshape(3, m)
    ATZ = op.rmatmat(Z).reshape(3, n)
    assert_close(AY, Y.reshape(3, n) @ o.J.T, rtol=1e-10, atol=1e-10 * scale, name="matmat")
    assert_close(ATZ, Z.reshape(3, m) @ o.J, rtol=1e-10, atol=1e-10 * scale, name="rmatmat")
    assert_close(op.dense(), o.J, rtol=1e-10, atol=1e-10 * scale, name="dense()")
    assert_close(op.output, o.output, rtol=1e-12, atol=1e-12, name="output F(x)")


@pytest.mark.parametrize("name", CASE_IDS)
def test_adjoint_method_matches_autograd(name: str) -> None:
    o = oracle_for(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdjointFallbackWarning)  # every zoo layer has a rule
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        auto = linearize(o.model, o.x, method="auto")
    assert getattr(auto, "method", None) == "adjoint"
    explicit, tape = _linearize(o, "adjoint"), _linearize(o, "autograd")
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(4, *o.out_shape, generator=g, dtype=torch.float64)
    Y = torch.randn(4, *o.x.shape, generator=g, dtype=torch.float64)
    scale = float(o.J.abs().max())
    assert_close(explicit.rmatmat(Z), tape.rmatmat(Z), rtol=1e-10, atol=1e-12 * scale, name="A^T z")
    assert_close(explicit.matmat(Y), tape.matmat(Y), rtol=1e-10, atol=1e-12 * scale, name="A y")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_check_adjoint(name: str, method: str) -> None:
    op = _linearize(oracle_for(name), method)
    assert check_adjoint(op) < 1e-12


# -- (3) singular values, RPR and LPR ----------------------------------------------------------


@pytest.mark.parametrize(("solver", "block"), SOLVER_PARAMS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_solvers_match_lapack(name: str, solver: str, block: int) -> None:
    o = oracle_for(name)
    k = _k(o)
    op = _linearize(o, "adjoint")
    res = svd(op, k=k, tol=1e-10, solver=solver, config=SolverConfig(block_size=block))  # type: ignore[arg-type]
    assert res.S.shape == (k,) and res.U.shape == (k, *o.out_shape)
    assert res.V.shape == (k, *o.x.shape)
    assert_close(res.S, o.S[:k], rtol=1e-6, name=f"{solver} singular values")
    # RPR (Eq. 10) and LPR (Eq. 13) against the projections on LAPACK's vectors
    assert_close(
        rpr(res, o.x), projection_ratios(o.Vh[:k], o.x), rtol=0, atol=1e-6, name="RPR(x; r)"
    )
    y = _label_target(name, o)
    assert_close(lpr(res, y), projection_ratios(o.U.T[:k], y), rtol=0, atol=1e-6, name="LPR")


def test_mnist_28_lpr_at_full_rank_is_one() -> None:
    """At k = rank = 10 the left vectors span the whole logit space: LPR(y; 10) = 1."""
    o = oracle_for("mnist28")
    assert o.rank == 10
    res = svd(o.model, o.x, k=10, tol=1e-10, solver="lanczos")
    y = label_logits(3, 10)
    assert_close(lpr(res, y)[-1:], torch.ones(1), rtol=0, atol=1e-10, name="LPR(y; 10)")
    assert_close(res.S, o.S, rtol=1e-8, name="all 10 singular values")
    assert_close(rpr(res, o.x), projection_ratios(o.Vh, o.x), rtol=0, atol=1e-8, name="RPR")


# -- (4) homogeneity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [c.name for c in CASES if c.homogeneous])
def test_bias_free_models_are_homogeneous(name: str) -> None:
    """A[x] x = F(x) (paper Eq. 1) for bias-free piecewise-linear models, with no warning."""
    o = oracle_for(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotHomogeneousWarning)
        op = linearize(o.model, o.x, method="adjoint")
    Ax = op.matvec(o.x)
    rel = float((Ax - o.output).norm() / o.output.norm())
    assert rel < 1e-12, f"|A[x]x - F(x)| / |F(x)| = {rel:.3e}"
    assert homogeneity_error(o.model, o.x) < 1e-12
    assert homogeneity_error(o.model, o.x, method="autograd") < 1e-12


@pytest.mark.parametrize("name", [c.name for c in CASES if not c.homogeneous])
@pytest.mark.parametrize("method", METHODS)
def test_affine_models_warn(name: str, method: str) -> None:
    """Biases and batch-norm shifts make A[x] the Jacobian with A[x] x != F(x); say so."""
    o = oracle_for(name)
    assert homogeneity_error(o.model, o.x, method=method) > 1e-3  # type: ignore[arg-type]
    with pytest.warns(NotHomogeneousWarning, match="homogeneity_error"):
        linearize(o.model, o.x, method=method)  # type: ignore[arg-type]


# -- the Adjoint CNN, batches and scipy --------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist8", "pocket_unet3d", "plumbing"])
def test_adjoint_cnn_is_a_module_computing_At(name: str) -> None:
    o = oracle_for(name)
    G = adjoint_cnn(o.model, o.x)
    assert isinstance(G, nn.Module) and isinstance(G, AdjointCNN)
    g = torch.Generator().manual_seed(3)
    Z = torch.randn(2, *o.out_shape, generator=g, dtype=torch.float64)
    GZ = G(Z)
    assert GZ.shape == (2, *o.x.shape)
    assert_close(GZ.reshape(2, -1), Z.reshape(2, -1) @ o.J, rtol=1e-10, atol=1e-14, name="G(z)")
    text = str(G)
    assert "adjoint =" in text
    # every layer of a Sequential-free model appears, last layer first
    if name == "mnist8":
        order = [text.index(layer) for layer in ("fc3", "fc2", "fc1", "conv2", "conv1")]
        assert order == sorted(order), text


def _batch(name: str, B: int = 3) -> tuple[nn.Module, torch.Tensor]:
    case = case_by_name(name)
    model, x = case.build()
    g = torch.Generator().manual_seed(5)
    X = torch.cat([x[None], torch.randn(B - 1, *case.input_shape, generator=g).double()])
    return model, X


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["simplecnn", "pocket_unet3d", "maxpool2d", "plumbing"])
def test_linearize_batch_matches_each_sample(name: str, method: str) -> None:
    """B samples in one operator: each slice is that sample's own Jacobian."""
    model, X = _batch(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        op = linearize_batch(model, X, method=method)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(6)
    Y = torch.randn(3, 2, *op.in_shape, generator=g, dtype=torch.float64)
    Z = torch.randn(3, 2, *op.out_shape, generator=g, dtype=torch.float64)
    AY, ATZ = op.matmat(Y), op.rmatmat(Z)
    assert AY.shape == (3, 2, *op.out_shape) and ATZ.shape == (3, 2, *op.in_shape)
    for i in range(3):
        J = jacobian(model, X[i])
        tol = 1e-10 * float(J.abs().max())
        assert_close(
            AY[i].reshape(2, -1),
            Y[i].reshape(2, -1) @ J.T,
            rtol=1e-10,
            atol=tol,
            name=f"A[x_{i}] y",
        )
        assert_close(
            ATZ[i].reshape(2, -1),
            Z[i].reshape(2, -1) @ J,
            rtol=1e-10,
            atol=tol,
            name=f"A[x_{i}]^T z",
        )
    assert check_adjoint(op) < 1e-12


@pytest.mark.parametrize(("solver", "block"), SOLVER_PARAMS)
def test_svd_batch_matches_each_sample(solver: str, block: int) -> None:
    model, X = _batch("conv_nd")
    k = 4
    res = rprselect.svd_batch(
        model, X, k=k, tol=1e-10, solver=solver, config=SolverConfig(block_size=block)
    )  # type: ignore[arg-type]
    assert res.batched and res.S.shape == (3, k) and res.V.shape == (3, k, *X.shape[1:])
    ratios = rpr(res, X)
    assert ratios.shape == (3, k)
    for i in range(3):
        U, S, Vh = torch.linalg.svd(jacobian(model, X[i]), full_matrices=False)
        assert_close(res.S[i], S[:k], rtol=1e-8, name=f"singular values of sample {i}")
        assert_close(ratios[i], projection_ratios(Vh[:k], X[i]), rtol=0, atol=1e-8, name=f"RPR {i}")
        assert_close(rpr(res[i], X[i]), ratios[i], rtol=0, atol=0, name=f"result[{i}]")


def test_rank_k_logits_at_full_rank_is_the_output() -> None:
    """Eq. 8 at r = rank(A[x]) = 10 gives back F(x) = A[x]x for a bias-free classifier."""
    o = oracle_for("mnist8")
    res = svd(o.model, o.x, k=10, tol=1e-10, solver="dense")
    full = rprselect.rank_k_logits(res, o.x, 10)
    assert_close(
        full, o.output, rtol=1e-10, atol=1e-12 * float(o.output.abs().max()), name="A_10 x"
    )
    r3 = rprselect.rank_k_logits(res, o.x, 3)
    want = o.U[:, :3] @ (o.S[:3] * (o.Vh[:3] @ o.x.reshape(-1)))
    assert_close(r3, want, rtol=1e-10, atol=1e-14, name="A_3 x")


def test_to_scipy_svds_matches() -> None:
    pytest.importorskip("scipy", reason="to_scipy() needs scipy (rprselect[extras])")
    from scipy.sparse.linalg import svds

    o = oracle_for("conv_nd")
    op = _linearize(o, "adjoint")
    A = op.to_scipy()
    assert A.shape == tuple(o.J.shape)
    v = torch.randn(o.J.shape[1], dtype=torch.float64).numpy()
    assert_close(torch.from_numpy(A.matvec(v)), o.J @ torch.from_numpy(v), rtol=1e-10, atol=1e-14)
    u = torch.randn(o.J.shape[0], dtype=torch.float64).numpy()
    assert_close(
        torch.from_numpy(A.rmatvec(u)), o.J.T @ torch.from_numpy(u), rtol=1e-10, atol=1e-14
    )
    s = svds(A, k=4, tol=1e-12, return_singular_vectors=False, random_state=0)
    assert_close(torch.from_numpy(s.copy()).sort(descending=True).values, o.S[:4], rtol=1e-8)
