"""Bad input gets a clear error naming the parameter; unsupported layers and missing extras say
what to do instead; and ``import rprselect`` needs torch and numpy only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from dense_oracle import (
    assert_close,
    jacobian,
    oracle_for,
)
from torch import nn

import rprselect
from rprselect import (
    AdjointFallbackWarning,
    NotHomogeneousWarning,
    SolverConfig,
    UnsupportedLayerError,
    linearize,
    svd,
)
from rprselect.models import PocketUNet

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["auto", "adjoint", "autograd"]


def _mnist() -> tuple[nn.Module, torch.Tensor]:
    o = oracle_for("mnist8")
    return o.model, o.x.clone()


# -- x -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x(bad: float, method: str) -> None:
    model, x = _mnist()
    x[0, 2, 3] = bad
    with pytest.raises(ValueError, match=r"x must be finite, got NaN or Inf"):
        linearize(model, x, method=method)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"x must be finite"):
        svd(model, x, k=2)


@pytest.mark.parametrize("method", METHODS)
def test_all_zero_x(method: str) -> None:
    model, x = _mnist()
    with pytest.raises(ValueError, match=r"x must not be all zeros"):
        linearize(model, torch.zeros_like(x), method=method)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_x_shape_the_model_rejects(method: str) -> None:
    model, _ = _mnist()
    x = torch.randn(2, 8, 8, dtype=torch.float64)  # two channels for a one-channel conv
    with pytest.raises(ValueError, match=r"x of shape \(2, 8, 8\) was rejected by the model"):
        linearize(model, x, method=method)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_unet_x_of_the_wrong_size(method: str) -> None:
    """A UNet whose skips cannot line up: a ValueError about x, never a layer or a fallback."""
    torch.manual_seed(0)
    unet = PocketUNet(in_channels=2, out_channels=2, dims=3, depth=2, filters=3).double()
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AdjointFallbackWarning)
        with pytest.raises(ValueError, match=r"x"):
            linearize(unet, x, method=method)  # type: ignore[arg-type]


def test_x_type_and_rank() -> None:
    model, x = _mnist()
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got ndarray"):
        linearize(model, x.numpy())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        linearize(model, torch.ones(1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(C, \*spatial\)"):
        linearize(model, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"method must be 'auto', 'adjoint' or 'autograd'"):
        linearize(model, x, method="jvp")  # type: ignore[arg-type]


# -- k, tol, solver ----------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 11])
def test_k_out_of_range(k: int) -> None:
    model, x = _mnist()
    op = linearize(model, x)
    with pytest.raises(ValueError, match=rf"k must satisfy 0 < k <= min\(m, n\) = 10, got {k}"):
        svd(op, k=k)


def test_k_tol_solver_types() -> None:
    model, x = _mnist()
    op = linearize(model, x)
    with pytest.raises(TypeError, match=r"k must be an int, got float"):
        svd(op, k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tol must be > 0, got 0"):
        svd(op, k=2, tol=0.0)
    with pytest.raises(ValueError, match=r"solver must be one of .* got 'arpack'"):
        svd(op, k=2, solver="arpack")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"block_size must be >= 1, got 0"):
        SolverConfig(block_size=0)
    with pytest.raises(ValueError, match=r"x must be None when an operator is given"):
        svd(op, x, k=2)
    with pytest.raises(ValueError, match=r"x is required when a model is given"):
        svd(model, k=2)


# -- unsupported layers ------------------------------------------------------------------------


class _Act(nn.Module):
    """conv -> an activation without an adjoint rule -> linear."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.act = act
        self.fc = nn.Linear(2 * 4 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


class _FunctionalSoftmax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x).flatten(1), dim=1)


class _InplaceAlias(nn.Module):
    """An in-place ReLU on a tensor that a skip reads afterwards: no frozen chain can express it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        skip = h
        h = torch.relu_(h)  # overwrites skip too
        return (h + 2 * skip).flatten(1)


UNSUPPORTED = [
    pytest.param(_InplaceAlias, "relu_ (relu_)", id="inplace-alias"),
    pytest.param(lambda: _Act(nn.GELU()), "act (GELU)", id="GELU"),
    pytest.param(lambda: _Act(nn.Softmax(dim=1)), "act (Softmax)", id="Softmax"),
    pytest.param(lambda: _Act(nn.GroupNorm(1, 2)), "act (GroupNorm)", id="GroupNorm"),
    pytest.param(_FunctionalSoftmax, "softmax", id="F.softmax"),
]


def _unsupported(factory: object) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = factory().double().eval()  # type: ignore[operator]
    return model, torch.randn(1, 6, 6, generator=torch.Generator().manual_seed(1)).double()


@pytest.mark.parametrize(("factory", "layer"), UNSUPPORTED)
def test_unsupported_layer_with_adjoint_raises(factory: object, layer: str) -> None:
    model, x = _unsupported(factory)
    pattern = rf"layer '{re.escape(layer)}.* use method='autograd'"
    with pytest.raises(UnsupportedLayerError, match=pattern):
        linearize(model, x, method="adjoint")
    assert issubclass(UnsupportedLayerError, TypeError)


@pytest.mark.parametrize(("factory", "layer"), UNSUPPORTED)
def test_unsupported_layer_with_auto_falls_back(factory: object, layer: str) -> None:
    model, x = _unsupported(factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        with pytest.warns(AdjointFallbackWarning, match=rf"layer '{re.escape(layer)}"):
            op = linearize(model, x, method="auto")
    assert getattr(op, "method", None) == "autograd"
    J = jacobian(model, x)
    assert_close(op.dense(), J, rtol=1e-10, atol=1e-14, name="fallback A[x]")
    res = svd(op, k=2, tol=1e-10, solver="lanczos")
    assert_close(res.S, torch.linalg.svdvals(J)[:2], rtol=1e-6, name="fallback singular values")


# -- optional dependencies ---------------------------------------------------------------------


def test_slepc_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "slepc4py", None)  # "import slepc4py" now fails
    model, x = _mnist()
    with pytest.raises(ImportError, match=r"pip install 'rprselect\[slepc\]'"):
        svd(model, x, k=2, solver="slepc")


_BLOCKED = (
    "scipy sklearn monai slepc4py petsc4py modAL skorch pandas matplotlib nibabel ignite tqdm"
)
_IMPORT_CHECK = f"""
import sys
BLOCKED = set({_BLOCKED.split()!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, Block())
import numpy, torch
before = set(sys.modules)
import rprselect
new = {{m.split(".")[0] for m in set(sys.modules) - before}}
bad = sorted(new & BLOCKED)
assert not bad, bad
print(rprselect.__version__)
"""


def test_import_needs_only_torch_and_numpy() -> None:
    """``import rprselect`` works with every optional package hidden, and imports none."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == rprselect.__version__


def test_gelu_model_warning_names_the_activation_not_constants() -> None:
    """A bias-free GELU network has no constant term: the warning must not blame constants
    (issue 15, item 9), it names the layer that is not piecewise linear."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.GELU()).double()
    x = torch.rand(1, 6, 6, dtype=torch.float64) + 0.1
    with pytest.warns(NotHomogeneousWarning) as rec:
        rprselect.linearize(net, x)
    msg = " ".join(str(w.message) for w in rec if w.category is NotHomogeneousWarning)
    assert "GELU" in msg and "not piecewise linear" in msg, msg
    assert "with constant terms (" not in msg, msg
    gap = rprselect.homogeneity_error(net, x)
    assert f"{gap:.2g}" in msg and gap > 1e-3
