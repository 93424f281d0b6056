"""``linearize``: the matrix A[x] of a model at a sample x, as an operator.

For a bias-free CNN of convolutions, ReLU, sum/max pooling, nearest upsampling and skips, the
network is piecewise linear and positively homogeneous, so ``A[x] x = F(x)`` (paper Eq. 1).
For a general model (biases, normalisation, LeakyReLU, ...) A[x] is the Jacobian at x: we say
so with a warning, and :func:`homogeneity_error` reports how far ``A[x] x`` is from ``F(x)``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor, fx, nn

from .adjoint import AdjointOperator
from .modes import check_points, eval_mode
from .operator import LinearOperator
from .recorder import UnsupportedLayerError, trace

__all__ = [
    "AutogradOperator",
    "NotHomogeneousWarning",
    "AdjointFallbackWarning",
    "linearize",
    "linearize_batch",
    "homogeneity_error",
    "prepare_graph",
    "eval_mode",
]

Method = Literal["auto", "adjoint", "autograd"]


class NotHomogeneousWarning(UserWarning):
    """A[x] is the Jacobian of a model with constant terms, so ``A[x] x != F(x)``."""


class AdjointFallbackWarning(UserWarning):
    """``method='auto'`` fell back to autograd because a layer has no explicit adjoint rule."""


def prepare_graph(model: nn.Module, method: Method = "auto") -> fx.GraphModule | None:
    """Trace ``model`` once, for every later :func:`linearize_batch` with ``graph=``.

    Scoring a pool linearises the same network at every batch (and every sliding-window
    group); tracing it once per scoring call removes the repeated ``torch.fx`` trace.

    Returns:
        The traced graph, or ``None`` when ``method="autograd"`` (nothing to trace) or when
        ``method="auto"`` and the model cannot be traced (each batch then falls back to
        autograd with a warning, as without a graph).

    Raises:
        UnsupportedLayerError: ``method="adjoint"`` and the model cannot be traced.
    """
    if method == "autograd":
        return None
    try:
        return trace(model)
    except UnsupportedLayerError:
        if method == "adjoint":
            raise
        return None


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


def linearize_batch(
    model: nn.Module,
    X: Tensor,
    method: Method = "auto",
    *,
    graph: fx.GraphModule | None = None,
) -> LinearOperator:
    """A[x_i] for a batch of samples at once: ``matmat`` maps ``(B, b, *in) -> (B, b, *out)``.

    Every network pass carries all ``B * b`` vectors, which is what makes pool scoring fast.
    See :func:`linearize` for the arguments; ``graph`` is the model traced once by
    :func:`prepare_graph`, reused instead of tracing again.
    """
    if method not in ("auto", "adjoint", "autograd"):
        raise ValueError(f"method must be 'auto', 'adjoint' or 'autograd', got {method!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_points(X, "x")
    op: LinearOperator
    fallback: str | None = None
    with eval_mode(model):
        try:
            if method == "autograd":
                op = AutogradOperator(model, X)
            else:
                try:
                    op = AdjointOperator(model, X, gm=graph)
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
                    fallback = err.layer
        except (RuntimeError, IndexError) as err:
            raise ValueError(
                f"x of shape {tuple(X.shape[1:])} was rejected by the model: {err}"
            ) from err
    if not isinstance(op.output, Tensor):
        raise TypeError("the model must return one tensor")
    _warn_if_affine(op, X, fallback)
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
    return linearize_batch(model, x.unsqueeze(0), method).unbatched()


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
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotHomogeneousWarning)
        op = linearize_batch(model, x.unsqueeze(0), method)
    return _relative_gap(op, x.unsqueeze(0))


def _relative_gap(op: LinearOperator, X: Tensor) -> float:
    """``max_i |A[x_i] x_i - F(x_i)| / |F(x_i)|`` of a batched operator at the points ``X``."""
    assert op.output is not None  # set by both operators above
    Ax = op.apply(X.unsqueeze(1).to(op.dtype))[:, 0]
    Fx = op.output.reshape(X.shape[0], -1)
    gap = (Ax.reshape(X.shape[0], -1) - Fx).norm(dim=1) / Fx.norm(dim=1).clamp_min(1e-300)
    return float(gap.max())


def _warn_if_affine(op: LinearOperator, X: Tensor, fallback: str | None) -> None:
    layers = getattr(op, "affine_layers", None)
    if layers is None:  # autograd: measure instead of inspecting
        n0, p0 = op.n_products, op.n_passes
        gap = _relative_gap(op, X)
        op.n_products, op.n_passes = n0, p0
        if gap <= 1e3 * torch.finfo(X.dtype).eps:
            return
        # The gap may come from constant terms or from a layer that is not piecewise linear
        # (GELU, SiLU, ...): name what is known instead of blaming constants.
        cause = (
            f"layer {fallback!r} is not piecewise linear and positively homogeneous, or the "
            "model has constant terms"
            if fallback is not None
            else "the model is not piecewise linear and positively homogeneous"
        )
        warnings.warn(
            f"A[x] is the Jacobian of the model, and A[x]x != F(x) (measured relative gap "
            f"{gap:.2g}): {cause}; rprselect.homogeneity_error(model, x) reports the gap",
            NotHomogeneousWarning,
            stacklevel=3,
        )
        return
    if layers:
        shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
        warnings.warn(
            f"A[x] is the Jacobian of a model with constant terms ({shown}), so A[x]x != F(x); "
            "rprselect.homogeneity_error(model, x) reports how far apart they are",
            NotHomogeneousWarning,
            stacklevel=3,
        )
