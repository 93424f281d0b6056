"""``linearize``: the matrix A[x] of a model at a sample x, as an operator.

For a bias-free CNN of convolutions, ReLU, sum/max pooling, nearest upsampling and skips, the
network is piecewise linear and positively homogeneous, so ``A[x] x = F(x)`` (paper Eq. 1).
For a general model (biases, normalisation, LeakyReLU, ...) A[x] is the Jacobian at x: we say
so with a warning, and :func:`homogeneity_error` reports how far ``A[x] x`` is from ``F(x)``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from .adjoint import AdjointOperator, UnsupportedLayerError
from .operator import LinearOperator

__all__ = [
    "AutogradOperator",
    "NotHomogeneousWarning",
    "AdjointFallbackWarning",
    "linearize",
    "linearize_batch",
    "homogeneity_error",
]

Method = Literal["auto", "adjoint", "autograd"]


class NotHomogeneousWarning(UserWarning):
    """A[x] is the Jacobian of a model with constant terms, so ``A[x] x != F(x)``."""


class AdjointFallbackWarning(UserWarning):
    """``method='auto'`` fell back to autograd because a layer has no explicit adjoint rule."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, restoring each module's own mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


class AutogradOperator(LinearOperator):
    """A[x] as the Jacobian of any differentiable model, by ``torch.func`` jvp/vjp vmapped over
    the block. Works for every model; each product re-runs the network under autograd.

    Args:
        model: the network; called in eval mode.
        X: linearisation points ``(B, C, *spatial)``.
        batched: whether the public methods take a leading sample dimension.
    """

    method = "autograd"

    def __init__(self, model: nn.Module, X: Tensor, *, batched: bool = True) -> None:
        from torch.func import jvp, vjp

        self._model = model
        self._X = X
        with eval_mode(model):
            out, self._vjp = vjp(model, X)  # type: ignore[misc]
        super().__init__(
            tuple(X.shape[1:]),
            tuple(out.shape[1:]),
            batch=X.shape[0] if batched else None,
            dtype=X.dtype,
            device=X.device,
        )
        self.output = out.detach()
        self._jvp = jvp

    def _matmat(self, Y: Tensor) -> Tensor:
        from torch.func import vmap

        def one(t: Tensor) -> Tensor:
            return self._jvp(self._model, (self._X,), (t,))[1]

        with eval_mode(self._model):
            out = vmap(one)(Y.transpose(0, 1).contiguous())
        return out.detach().transpose(0, 1)

    def _rmatmat(self, Z: Tensor) -> Tensor:
        from torch.func import vmap

        out = vmap(lambda z: self._vjp(z)[0])(Z.transpose(0, 1).contiguous())
        return out.detach().transpose(0, 1)


def _check_points(X: Tensor, name: str) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {X.dtype}")
    bad = ~torch.isfinite(X)
    if bad.any():
        where = bad.reshape(X.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite, got NaN or Inf (in sample(s) {where[:10]})")
    zero = X.reshape(X.shape[0], -1).abs().amax(1) == 0
    if zero.any():
        where = zero.nonzero().flatten().tolist()
        raise ValueError(
            f"{name} must not be all zeros (RPR is undefined), got an all-zero "
            f"sample at index {where[:10]}"
        )


def linearize_batch(model: nn.Module, X: Tensor, method: Method = "auto") -> LinearOperator:
    """A[x_i] for a batch of samples at once: ``matmat`` maps ``(B, b, *in) -> (B, b, *out)``.

    Every network pass carries all ``B * b`` vectors, which is what makes pool scoring fast.
    See :func:`linearize` for the arguments.
    """
    if method not in ("auto", "adjoint", "autograd"):
        raise ValueError(f"method must be 'auto', 'adjoint' or 'autograd', got {method!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_points(X, "x")
    op: LinearOperator
    with eval_mode(model):
        try:
            if method == "autograd":
                op = AutogradOperator(model, X)
            else:
                try:
                    op = AdjointOperator(model, X)
                except UnsupportedLayerError as err:
                    if method == "adjoint":
                        raise
                    warnings.warn(
                        f"falling back to method='autograd': layer {err.layer!r} has "
                        "no explicit adjoint rule",
                        AdjointFallbackWarning,
                        stacklevel=2,
                    )
                    op = AutogradOperator(model, X)
        except (RuntimeError, IndexError) as err:
            raise ValueError(
                f"x of shape {tuple(X.shape[1:])} was rejected by the model: {err}"
            ) from err
    if not isinstance(op.output, Tensor):  # type: ignore[attr-defined]
        raise TypeError("the model must return one tensor")
    _warn_if_affine(op, model, X)
    op.n_products = op.n_passes = 0
    return op


def linearize(model: nn.Module, x: Tensor, method: Method = "auto") -> LinearOperator:
    """The matrix A[x] with ``A[x] x = F(x)`` (paper Eq. 1), as a linear operator.

    Args:
        model: the CNN. It is run in eval mode; its own mode is restored afterwards.
        x: one sample without a batch dimension, shape ``(C, *spatial)``.
        method: ``"adjoint"`` builds the explicit Adjoint CNN (Table 1) and runs frozen,
            tape-free passes; ``"autograd"`` uses torch.func jvp/vjp and works for any
            differentiable model; ``"auto"`` prefers ``"adjoint"`` and falls back to
            ``"autograd"`` with an :class:`AdjointFallbackWarning` naming the layer.

    Returns:
        An operator with ``in_shape``, ``out_shape``, ``matmat(Y)`` for ``Y`` of shape
        ``(b, *in_shape)``, ``rmatmat(Z)`` for ``Z`` of shape ``(b, *out_shape)``,
        ``to_scipy()``, and ``output`` = F(x).

    Raises:
        TypeError: model or x of the wrong type; :class:`UnsupportedLayerError` (a TypeError)
            for an unsupported layer with ``method="adjoint"``.
        ValueError: x with NaN/Inf, all zeros, or a shape the model rejects.

    Example:
        >>> from rprselect.layers import SumPool
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), SumPool(2))
        >>> x = torch.rand(1, 4, 4, dtype=torch.float64)
        >>> op = linearize(net.double(), x)
        >>> op.in_shape, op.out_shape
        ((1, 4, 4), (2, 2, 2))
        >>> bool(torch.allclose(op.matvec(x), net(x[None])[0]))
        True
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(
            f"x must have shape (C, *spatial) without a batch dimension, got a {x.dim()}-D tensor"
        )
    op = linearize_batch(model, x.unsqueeze(0), method)
    op.batch = None
    op.output = op.output[0]  # type: ignore[attr-defined]
    return op


def homogeneity_error(model: nn.Module, x: Tensor, method: Method = "auto") -> float:
    """How far the linearisation is from the model at x.

    .. math:: \\frac{\\|A[x]x - F(x)\\|}{\\|F(x)\\|}

    It is zero (to rounding) for bias-free piecewise-linear CNNs (Eq. 1) and measures the
    constant terms of any other model.

    Args:
        model: the network.
        x: one sample ``(C, *spatial)``.
        method: as in :func:`linearize`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        op = linearize(model, x, method)
    return _relative_gap(op, x.unsqueeze(0))


def _relative_gap(op: LinearOperator, X: Tensor) -> float:
    out: Tensor = op.output  # type: ignore[attr-defined]
    batch = op.batch
    op.batch = X.shape[0]
    try:
        Ax = op.matmat(X.unsqueeze(1))[:, 0]
    finally:
        op.batch = batch
    Fx = out.reshape(X.shape[0], -1)
    gap = (Ax.reshape(X.shape[0], -1) - Fx).norm(dim=1) / Fx.norm(dim=1).clamp_min(1e-300)
    return float(gap.max())


def _warn_if_affine(op: LinearOperator, model: nn.Module, X: Tensor) -> None:
    layers = getattr(op, "affine_layers", None)
    if layers is None:  # autograd: measure instead of inspecting
        tol = 1e3 * torch.finfo(X.dtype).eps
        if _relative_gap(op, X) <= tol:
            return
        layers = ["(measured)"]
    if layers:
        shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
        warnings.warn(
            f"A[x] is the Jacobian of a model with constant terms ({shown}), so A[x]x != F(x); "
            "rprselect.homogeneity_error(model, x) reports how far apart they are",
            NotHomogeneousWarning,
            stacklevel=3,
        )
