"""Trace a model and record its activation pattern at x (the first half of the Adjoint CNN).

``torch.fx`` traces the model into a graph. One forward pass at x visits every node: a node
that depends on x becomes a frozen linear :class:`~rprselect.rules.Rule` (ReLU masks, max-pool
argmax and LeakyReLU slopes are recorded here); sizes computed from x are kept as meta nodes;
everything else is a constant. Layers without a rule raise :class:`UnsupportedLayerError`.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from . import rules as R
from .layers import NearestUpsample, SumPool

__all__ = ["UnsupportedLayerError", "Recorder", "Step", "trace"]


class UnsupportedLayerError(TypeError):
    """A layer the explicit Adjoint CNN has no rule for; ``method="autograd"`` handles any."""

    def __init__(self, layer: str, why: str) -> None:
        self.layer = layer
        super().__init__(
            f"layer {layer!r} is not supported by method='adjoint' ({why}); "
            "use method='autograd' (or 'auto', which falls back to it)"
        )


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (SumPool, NearestUpsample)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``, treating rprselect's pooling layers as leaves.

    Raises:
        UnsupportedLayerError: when the model cannot be traced (data-dependent control flow).
    """
    tracer = _Tracer()
    if tracer.is_leaf_module(model, ""):  # a bare layer: trace it as a one-layer network
        model = nn.Sequential(model)
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises many types; all mean "not traceable"
        raise UnsupportedLayerError(
            type(model).__name__, f"torch.fx cannot trace it: {err}"
        ) from err
    return fx.GraphModule(model, graph)


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_LEAKY_FUNCS = {F.leaky_relu, F.leaky_relu_}
_MAXPOOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_AVGPOOL_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d}
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_NOOP_METHODS = {"contiguous", "clone", "detach"}
_MAXPOOL_MODULES: dict[type, int] = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}


class Step:
    """One linear node: its rule and where its inputs come from."""

    __slots__ = ("node", "rule", "inputs")

    def __init__(self, node: str, rule: R.Rule, inputs: list[str]) -> None:
        self.node, self.rule, self.inputs = node, rule, inputs


class Recorder:
    """Runs the traced graph once at x and turns each input-dependent node into a rule."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.env: dict[str, Any] = {}
        self.linear: set[str] = set()  # nodes whose tensor value depends on x
        self.meta: set[str] = set()  # non-tensor values that depend on x (sizes)
        self.steps: list[Step] = []
        self.affine: list[str] = []  # layers whose constant term makes A[x]x != F(x)

    def run(self, x: Tensor) -> Tensor:
        out: Any = None
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        last_use: dict[str, fx.Node] = {}
        for node in self.gm.graph.nodes:
            for src in node.all_input_nodes:
                last_use[src.name] = node
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.linear:
                    raise UnsupportedLayerError(node.name, "models with several inputs")
                self.env[node.name] = x
                self.linear.add(node.name)
                self.input = node.name
            elif node.op == "get_attr":
                self.env[node.name] = _fetch_attr(self.gm, node.target)
            elif node.op == "output":
                res = node.args[0]
                if not isinstance(res, fx.Node) or res.name not in self.linear:
                    raise UnsupportedLayerError("output", "the output must be one tensor of x")
                self.output = res.name
                out = self.env[res.name]
            else:
                self._call(node)
            for src in node.all_input_nodes:  # free activations as soon as they are used up
                if last_use[src.name] is node and src.name in self.linear and node.op != "output":
                    self.env.pop(src.name, None)
        return out

    def _call(self, node: fx.Node) -> None:
        args = fx.node.map_arg(node.args, lambda n: self.env[n.name])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n.name])
        deps = [
            n.name for n in node.all_input_nodes if n.name in self.linear or n.name in self.meta
        ]
        fn = self.call_target(node)
        value = fn(*args, **kwargs)
        self.env[node.name] = value
        if not deps:
            return
        if not isinstance(value, Tensor):
            self.meta.add(node.name)
            return
        lin_inputs = [n for n in node.all_input_nodes if n.name in self.linear]
        if not lin_inputs:  # a tensor built from sizes only, e.g. torch.zeros(x.size(0))
            return
        rule, inputs = self._rule(node, args, kwargs, value)
        self.linear.add(node.name)
        self.steps.append(Step(node.name, rule, inputs))

    def call_target(self, node: fx.Node) -> Callable[..., Any]:
        if node.op == "call_module":
            return self.modules[str(node.target)]
        if node.op == "call_method":
            return lambda obj, *a, **k: getattr(obj, str(node.target))(*a, **k)
        return node.target  # type: ignore[return-value]

    def _shape(self, n: fx.Node) -> tuple[int, ...]:
        return tuple(self.env[n.name].shape[1:])

    def _rule(
        self, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any], value: Tensor
    ) -> tuple[R.Rule, list[str]]:
        lin = [n for n in node.all_input_nodes if n.name in self.linear]
        name = str(node.target) if node.op != "call_function" else node.name
        label = name if node.op == "call_module" else f"{node.name} ({_target_name(node)})"
        # errors name the module's type too: "act (GELU)", not just "act"
        where = (
            f"{label} ({type(self.modules[name]).__name__})" if node.op == "call_module" else label
        )
        try:
            rule = self._make(node, args, kwargs, value, lin, label)
        except NotImplementedError as err:
            raise UnsupportedLayerError(where, str(err)) from None
        if rule is None:
            raise UnsupportedLayerError(where, "no adjoint rule for this operation")
        if isinstance(rule, tuple):
            return rule[0], rule[1]
        return rule, [n.name for n in lin]

    def _make(
        self,
        node: fx.Node,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        value: Tensor,
        lin: list[fx.Node],
        label: str,
    ) -> Any:
        if _is_inplace(node, self.modules) and _mutates_later_read(node, self.order, self.modules):
            raise NotImplementedError("an in-place operation on a tensor that is read again later")
        if len(lin) == 1:
            x = self.env[lin[0].name]
            shape = self._shape(lin[0])
        if node.op == "call_module":
            if len(lin) != 1 or node.args[0] is not lin[0]:
                raise NotImplementedError("a module whose first input is not the signal")
            return self._module_rule(self.modules[str(node.target)], x, shape, label, value)
        target = node.target
        if node.op == "call_method":
            return self._method_rule(
                str(target), node, args, x if len(lin) == 1 else None, lin, label, value
            )
        if target in _ADD or target in _SUB:
            return self._sum_rule(node, args, lin, label, -1.0 if target in _SUB else 1.0)
        if len(lin) != 1:
            if target in (torch.cat, torch.concat):
                return self._cat_rule(node, args, kwargs, lin, label)
            raise NotImplementedError("an operation on several input-dependent tensors")
        if target in _RELU_FUNCS:
            return R.Mask(label, shape, (x > 0).to(x.dtype))
        if target in _LEAKY_FUNCS:
            slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            return R.Mask(label, shape, _leaky_slope(x, slope))
        if target in _MAXPOOL_FUNCS:
            kw = dict(kwargs, return_indices=True)
            _, idx = target(*args, **kw)  # type: ignore[operator]
            return R.MaxPool(label, shape, idx)
        if target in _AVGPOOL_FUNCS:
            names = [
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            ]
            defaults: dict[str, Any] = {
                "stride": None,
                "padding": 0,
                "ceil_mode": False,
                "count_include_pad": True,
                "divisor_override": None,
            }
            p = dict(defaults, **dict(zip(names, args[1:], strict=False)), **kwargs)
            return R.AvgPool(label, shape, **p)
        if target is F.interpolate:
            mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
            if mode not in ("nearest", "nearest-exact"):
                raise NotImplementedError(f"interpolate mode {mode!r}")
            rest = args[1:]
            return R.Nearest(label, shape, lambda g: F.interpolate(g, *rest, **kwargs))
        if target in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze):
            return self._reshape(label, shape, value, x)
        if target in (torch.permute, torch.transpose):
            return R.Permute(label, shape, _perm_dims(target, x.dim(), args[1:]))
        if target is operator.getitem:
            return R.Slice(label, shape, args[1])
        if target in (torch.cat, torch.concat):
            return self._cat_rule(node, args, kwargs, lin, label)
        if target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
            return R.Identity(label, [shape])
        if target in _MUL or (target in _DIV and node.args[0] is lin[0]):
            other = args[1] if node.args[0] is lin[0] else args[0]
            if target in _DIV:
                other = 1.0 / other
            return R.Scale(label, shape, other)
        if target is operator.neg or target is torch.neg:
            return R.Scale(label, shape, -1.0)
        return None

    def _module_rule(
        self, m: nn.Module, x: Tensor, shape: tuple[int, ...], label: str, value: Tensor
    ) -> R.Rule | None:
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if m.padding_mode != "zeros":
                raise NotImplementedError(f"padding_mode={m.padding_mode!r}")
            self._note_bias(label, m.bias)
            return R.Conv(label, shape, m.weight, m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            self._note_bias(label, m.bias)
            return R.ConvTranspose(
                label, shape, m.weight, m.stride, m.padding, m.output_padding, m.groups, m.dilation
            )
        if isinstance(m, nn.Linear):
            self._note_bias(label, m.bias)
            return R.Dense(label, shape, m.weight)
        if isinstance(m, nn.ReLU):
            return R.Mask(label, shape, (x > 0).to(x.dtype))
        if isinstance(m, nn.LeakyReLU):
            return R.Mask(label, shape, _leaky_slope(x, m.negative_slope))
        if isinstance(m, SumPool):
            return R.SumPoolRule(label, shape, m.kernel_size)
        if isinstance(m, NearestUpsample):
            k = float(m.scale_factor)
            return R.Nearest(label, shape, lambda g: F.interpolate(g, scale_factor=k))
        if type(m) in _MAXPOOL_MODULES:
            pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[_MAXPOOL_MODULES[type(m)]]
            _, idx = pool(
                x,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,  # type: ignore
                ceil_mode=m.ceil_mode,
                return_indices=True,
            )
            return R.MaxPool(label, shape, idx)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return R.AvgPool(
                label,
                shape,
                m.kernel_size,
                m.stride,
                m.padding,
                m.ceil_mode,
                m.count_include_pad,
                getattr(m, "divisor_override", None),
            )
        if isinstance(m, nn.Upsample):
            if m.mode not in ("nearest", "nearest-exact"):
                raise NotImplementedError(f"Upsample mode {m.mode!r}")
            return R.Nearest(label, shape, lambda g: m(g))
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            if m.training or m.running_var is None:
                raise NotImplementedError("batch norm outside eval mode or without running stats")
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            self.affine.append(label)
            return R.ChannelScale(label, shape, scale.to(x.dtype))
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity)):
            return R.Identity(label, [shape])
        if isinstance(m, nn.Flatten):
            return self._reshape(label, shape, value, x)
        return None

    def _method_rule(
        self,
        method: str,
        node: fx.Node,
        args: tuple[Any, ...],
        x: Tensor | None,
        lin: list[fx.Node],
        label: str,
        value: Tensor,
    ) -> Any:
        if method in ("add", "sub", "add_", "sub_"):
            return self._sum_rule(node, args, lin, label, -1.0 if "sub" in method else 1.0)
        if x is None or node.args[0] is not lin[0]:
            raise NotImplementedError("a method on several input-dependent tensors")
        shape = self._shape(lin[0])
        rest = args[1:]
        if method in ("relu", "relu_"):
            return R.Mask(label, shape, (x > 0).to(x.dtype))
        if method in _RESHAPE_METHODS:
            return self._reshape(label, shape, value, x)
        if method in _NOOP_METHODS:
            return R.Identity(label, [shape])
        if method in ("permute", "transpose"):
            return R.Permute(label, shape, _perm_dims(method, x.dim(), rest))
        if method in ("mul", "mul_", "div", "div_"):
            other = rest[0] if "mul" in method else 1.0 / rest[0]
            return R.Scale(label, shape, other)
        if method == "__getitem__":
            return R.Slice(label, shape, rest[0])
        return None

    def _sum_rule(
        self, node: fx.Node, args: tuple[Any, ...], lin: list[fx.Node], label: str, sign: float
    ) -> Any:
        signs, inputs, shapes = [], [], []
        for pos, a in enumerate(node.args[:2]):
            if isinstance(a, fx.Node) and a.name in self.linear:
                signs.append(1.0 if pos == 0 else sign)
                inputs.append(a.name)
                shapes.append(self._shape(a))
            elif (
                isinstance(a, Tensor)
                or (isinstance(a, fx.Node) and isinstance(self.env[a.name], Tensor))
                or isinstance(a, (int, float))
            ):
                self.affine.append(label)  # a constant term: A[x]x != F(x)
        if "alpha" in node.kwargs or len(node.args) > 2:
            raise NotImplementedError("add/sub with alpha")
        return R.Sum(label, shapes, signs), inputs

    def _cat_rule(
        self,
        node: fx.Node,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        lin: list[fx.Node],
        label: str,
    ) -> Any:
        tensors = node.args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        assert isinstance(tensors, (list, tuple))
        flags = [isinstance(t, fx.Node) and t.name in self.linear for t in tensors]
        shapes = [tuple(v.shape[1:]) for v in args[0]]
        inputs = [t.name for t, f in zip(tensors, flags, strict=True) if f]  # type: ignore
        if not all(flags):
            self.affine.append(label)
        return R.Concat(label, shapes, dim, flags), inputs

    def _reshape(self, label: str, shape: tuple[int, ...], value: Tensor, x: Tensor) -> R.Rule:
        if value.dim() == 0 or value.shape[0] != x.shape[0]:
            raise NotImplementedError("a reshape that merges or splits the batch dimension")
        return R.Reshape(label, shape, tuple(value.shape[1:]))

    def _note_bias(self, label: str, bias: Tensor | None) -> None:
        if bias is not None:
            self.affine.append(label)


_VIEW_FUNCS = {
    operator.getitem,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.narrow,
    torch.select,
}
_VIEW_METHODS = _RESHAPE_METHODS | {"permute", "transpose", "__getitem__", "contiguous", "detach"}
_VIEW_METHODS |= {"expand", "expand_as", "narrow", "select", "t"}
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node overwrites its first argument (``relu_``, ``inplace=True``, ``x.add_``)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        return bool(getattr(m, "inplace", False)) and not isinstance(m, _VIEW_MODULES)
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    if node.op != "call_function":
        return False
    if node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv):
        return True
    if getattr(node.target, "__name__", "").endswith("_"):
        return True
    try:  # F.relu(x, True) as well as F.relu(x, inplace=True)
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return bool(node.kwargs.get("inplace", False))
    return node.target not in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d) and bool(
        bound.arguments.get("inplace", False)
    )


def _is_view(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node may return (a view of) its first argument's storage."""
    if node.op == "call_function":
        return node.target in _VIEW_FUNCS
    if node.op == "call_method":
        return str(node.target) in _VIEW_METHODS
    if node.op == "call_module":  # Identity, eval-mode Dropout and Flatten return aliases
        return isinstance(modules[str(node.target)], _VIEW_MODULES)
    return False


def _mutates_later_read(
    node: fx.Node, order: dict[fx.Node, int], modules: dict[str, nn.Module]
) -> bool:
    """Whether an in-place node overwrites storage that another node reads afterwards.

    The traced graph names the value before and after the in-place op differently, so such a
    later read would get the pre-op tangent in the rule chain while the model sees the post-op
    data. Views share storage, so the search follows them up to their base and down again.
    """
    first = node.args[0] if node.args else None
    if not isinstance(first, fx.Node):
        return False
    pos = order[node]
    seen: set[fx.Node] = set()
    stack = [first]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if _is_view(t, modules) and t.args and isinstance(t.args[0], fx.Node):
            stack.append(t.args[0])
        for user in t.users:
            if user is node:
                continue
            if order[user] > pos:
                return True
            if _is_view(user, modules):
                stack.append(user)
    return False


def _leaky_slope(x: Tensor, negative_slope: float) -> Tensor:
    # full_like keeps the slope in x's dtype: 0.1 through float32 would be off by 1.5e-9
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, negative_slope))


def _fetch_attr(gm: fx.GraphModule, target: Any) -> Any:
    obj: Any = gm
    for part in str(target).split("."):
        obj = getattr(obj, part)
    return obj


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", repr(t))


def _perm_dims(target: Any, ndim: int, rest: tuple[Any, ...]) -> list[int]:
    if target in ("transpose", torch.transpose):
        a, b = (d % ndim for d in rest[:2])
        dims = list(range(ndim))
        dims[a], dims[b] = dims[b], dims[a]
        return dims
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)
