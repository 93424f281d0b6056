"""A memory budget for rank-k scoring: choose the Lanczos basis, the vectors per pass and the
sliding-window batch so that the solve fits ``max_memory`` instead of running out.

The model of the peak, in bytes, of one sample's solve (float64 bases, products in the
network's dtype of ``s`` bytes):

.. math::
    M = \\underbrace{8\\,(n_{cv} + b)(m + n)}_{\\text{Lanczos bases}}
      + \\underbrace{N_w\\, r_w}_{\\text{recorded windows}}
      + \\underbrace{g\\, b\\, a_w}_{\\text{one pass}}
      + \\underbrace{2\\, s\\, b\\, (m + n)}_{\\text{block in and out}},

with ``n``/``m`` the input/output sizes of the whole volume, ``N_w`` the (live) windows, ``r_w``
the bytes one window's recording keeps (ReLU masks, pooling indices, flipped kernels), ``a_w``
the activations of one window and one vector in a pass, and ``g`` the sliding-window batch
(``sw_batch_size``; windows per pass). Without sliding windows ``N_w = g = 1`` and the window
is the volume. :func:`window_costs` measures ``r_w`` and ``a_w`` on one window;
:func:`plan_memory` then picks, in this order of preference, the default basis (fewest
products), one vector per pass, and the largest ``g`` that fits; when the bases alone do not
fit it shrinks ``n_cv`` down to ``k + b + 1`` (more products, same answer). When even that
leaves no room for the recordings of all windows and ``allow_stream`` is set, it plans a
*streaming* operator (``SlidingWindowOperator(stream=True)``), whose recordings term is
``g r_w`` (one group alive at a time) instead of ``N_w r_w``, at the price of a recording
per group per product. It raises a ``ValueError`` that names every term when nothing fits.
:func:`plan_sliding` measures the costs on one window of a volume and plans its solve.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "MemoryPlan",
    "describe",
    "fit_ncv",
    "parse_memory",
    "plan_memory",
    "plan_sliding",
    "storage_for_budget",
    "window_costs",
]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value: int | str) -> int:
    """Bytes from ``8_000_000_000``, ``"8GB"``, ``"8 GiB"``, ``"512M"`` (powers of 1024).

    Raises:
        ValueError: not a positive size; TypeError: neither an int nor a string.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"max_memory must be an int (bytes) or a string like '8GB', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"max_memory must be > 0 bytes, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", value, re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"max_memory must look like '8GB', '512MiB' or '2.5G', got {value!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan_memory` chose, and its predicted peak.

    Attributes:
        ncv: Lanczos basis size (``SolverConfig.ncv``).
        block_size: vectors per pass (``SolverConfig.block_size``).
        sw_batch_size: windows per pass (the sliding-window option).
        predicted_bytes: the modelled peak.
        terms: the peak's terms by name, in bytes.
        stream: record window groups again per product instead of keeping every recording.
        basis_dtype: the Lanczos bases' dtype (``SolverConfig.basis_dtype``).
    """

    ncv: int
    block_size: int
    sw_batch_size: int
    predicted_bytes: int
    terms: dict[str, int]
    stream: bool = False
    basis_dtype: str = "float64"


def window_costs(model: nn.Module, window: Tensor) -> tuple[int, int]:
    """``(r_w, a_w)``: bytes one window's recording keeps, and activations per vector of a pass.

    ``r_w`` counts the distinct tensor storages held by the recorded rules of
    :func:`~rprselect.linearize_batch` at ``window`` (``(C, *roi)``); ``a_w`` sums the outputs
    of every leaf module of a no-grad forward pass of the window (the frozen pass keeps its
    intermediates until the pass ends).
    """
    r_w, a_w, _ = _costs(model, window)
    return r_w, a_w


def _costs(model: nn.Module, window: Tensor) -> tuple[int, int, tuple[int, ...]]:
    """:func:`window_costs` and the window's output shape."""
    from ..linearize import linearize_batch

    op = linearize_batch(model, window.unsqueeze(0))
    out_shape = tuple(op.out_shape)
    seen: dict[int, int] = {}
    for rule in getattr(getattr(op, "adjoint_network", None), "layers", []):
        for t in _tensors(rule):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    total = [0]

    def hook(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model(window.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return sum(seen.values()), total[0], out_shape


def _tensors(module: nn.Module) -> list[Tensor]:
    found = [v for v in vars(module).values() if isinstance(v, Tensor)]
    found += [v for v in module._buffers.values() if v is not None]
    found += [v for v in module._parameters.values() if v is not None]
    for v in vars(module).values():
        if isinstance(v, (list, tuple)):
            found += [t for t in v if isinstance(t, Tensor)]
    return found


def plan_memory(
    max_memory: int | str,
    *,
    n: int,
    m: int,
    k: int,
    record_bytes: int,
    pass_bytes: int,
    n_windows: int = 1,
    dtype_bytes: int = 4,
    block_sizes: tuple[int, ...] = (1,),
    ncv: int | None = None,
    allow_stream: bool = False,
    basis_bytes: tuple[int, ...] = (8,),
) -> MemoryPlan:
    """Basis size, vectors per pass and windows per pass that fit ``max_memory``.

    Args:
        max_memory: the budget, bytes or a string such as ``"8GB"``.
        n, m: input and output sizes of one sample (whole volume). k: triplets.
        record_bytes: ``r_w`` of :func:`window_costs`. pass_bytes: ``a_w``.
        n_windows: live windows ``N_w`` (1 without sliding windows).
        dtype_bytes: bytes of the network's dtype.
        block_sizes: vectors per pass to consider, preferred first.
        ncv: the basis wanted (default: the solver's default, ``max(2k + 2b, k + 16)``).
        allow_stream: when the recordings of all windows do not fit, plan a streaming
            operator (recordings of one group of ``g`` windows alive at a time).
        basis_bytes: bytes per basis number to consider, preferred first: ``(8, 4)`` falls
            back to float32 bases (``SolverConfig(basis_dtype="float32")``) when float64
            ones cannot fit, with or without streaming.

    Raises:
        ValueError: the budget cannot hold even the smallest basis; the message gives every
            term of the model.
    """
    budget = parse_memory(max_memory)
    streams = (False, True) if allow_stream and n_windows > 1 else (False,)
    for w, stream, b in ((w, st, b) for w in basis_bytes for st in streams for b in block_sizes):
        want = ncv or max(2 * k + 2 * b, k + 16)
        for cv in range(want, k + b, -1):  # down to k + b + 1
            fixed = w * (cv + b) * (m + n) + 2 * dtype_bytes * b * (m + n)
            per_window = b * pass_bytes + (record_bytes if stream else 0)
            room = budget - fixed - (0 if stream else n_windows * record_bytes)
            g = min(n_windows, room // max(per_window, 1)) if room > 0 else 0
            if g >= 1:
                terms = {
                    "bases": w * (cv + b) * (m + n),
                    "records": (int(g) if stream else n_windows) * record_bytes,
                    "pass": int(g) * b * pass_bytes,
                    "blocks": 2 * dtype_bytes * b * (m + n),
                }
                basis = "float64" if w == 8 else "float32"
                return MemoryPlan(cv, b, int(g), sum(terms.values()), terms, stream, basis)
    b, w = block_sizes[0], min(basis_bytes)
    cv = k + b + 1
    need = {
        "bases": w * (cv + b) * (m + n),
        "records": (1 if allow_stream else n_windows) * record_bytes,
        "pass": b * pass_bytes,
        "blocks": 2 * dtype_bytes * b * (m + n),
    }
    shown = ", ".join(f"{key} {v / 2**30:.2f} GiB" for key, v in need.items())
    raise ValueError(
        f"max_memory={max_memory!r} ({budget / 2**30:.2f} GiB) is below the smallest rank-{k} "
        f"solve of this input: {shown} (total {sum(need.values()) / 2**30:.2f} GiB) with "
        f"ncv={cv}, one vector and one window per pass"
        f"{' (streaming)' if allow_stream and n_windows > 1 else ''}; raise max_memory or lower k"
    )


def plan_sliding(
    model: nn.Module,
    x: Tensor,
    window: dict[str, object],
    k: int,
    max_memory: int | str,
    block_size: int = 1,
    ncv: int | None = None,
    basis_dtype: str = "float64",
) -> MemoryPlan:
    """Plan the sliding-window solve of volume ``x`` ``(C, *spatial)`` within ``max_memory``.

    Measures :func:`window_costs` on the first window of the grid (one recording and one
    forward pass of a window), counts the windows, and calls :func:`plan_memory` with
    ``allow_stream=True``, float64 bases first and float32 ones when those cannot fit (only
    float32 when ``basis_dtype="float32"`` is asked for). ``sw_batch_size`` in ``window``
    (when given) caps the plan's.

    Args:
        model: the segmentation network. x: one volume. window: the keyword arguments of
            :func:`~rprselect.sliding_window_operator` (``roi_size``, ``overlap``, ...).
        k: triplets. max_memory: the budget. block_size, ncv: the solver's wishes.
    """
    from ..sliding import window_grid

    overlap = window.get("overlap", 0.25)
    grid = window_grid(tuple(x.shape[1:]), window["roi_size"], overlap)  # type: ignore[arg-type]
    flat = [p for before_after in reversed(grid.pad) for p in before_after]
    xp = torch.nn.functional.pad(x, flat) if any(flat) else x
    patches = (xp[(slice(None), *w)] for w in grid.windows)
    # the costs depend on the window's shape only; a linearisation point must not be all zero
    first = next((p for p in patches if bool(p.any())), x.new_ones(x.shape[0], *grid.roi_size))
    record, pass_bytes, out_shape = _costs(model, first)
    n = x.numel()
    m = out_shape[0] * x[0].numel()
    plan = plan_memory(
        max_memory,
        n=n,
        m=m,
        k=k,
        record_bytes=record,
        pass_bytes=pass_bytes,
        n_windows=len(grid.windows),
        dtype_bytes=x.element_size(),
        block_sizes=(block_size,),
        ncv=ncv,
        allow_stream=True,
        basis_bytes=(8, 4) if basis_dtype == "float64" else (4,),
    )
    cap = window.get("sw_batch_size")
    if isinstance(cap, int) and cap < plan.sw_batch_size:  # the user asked for fewer windows
        terms = dict(plan.terms, **{"pass": cap * block_size * pass_bytes})
        if plan.stream:
            terms["records"] = cap * record
        plan = dataclasses.replace(
            plan, sw_batch_size=cap, predicted_bytes=sum(terms.values()), terms=terms
        )
    return plan


def describe(plan: MemoryPlan) -> str:
    """One line: the chosen knobs and the predicted peak by term."""
    terms = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in plan.terms.items())
    return (
        f"ncv={plan.ncv}, block_size={plan.block_size}, sw_batch_size={plan.sw_batch_size}"
        f"{', streaming' if plan.stream else ''}, {plan.basis_dtype} bases: "
        f"{plan.predicted_bytes / 2**30:.2f} GiB ({terms})"
    )


# -- a single Lanczos solve under a budget (SolverConfig.max_memory) ----------------------------
def fit_ncv(
    budget: int | str,
    ncv: int,
    k: int,
    b: int,
    B: int,
    m: int,
    n: int,
    dtype: torch.dtype,
    basis_dtype: str = "float64",
) -> int:
    """The largest basis ``<= ncv`` whose bases and blocks fit ``budget``."""
    limit = parse_memory(budget)
    block = 2 * B * b * (m + n) * dtype.itemsize
    w = getattr(torch, basis_dtype).itemsize
    for cv in range(ncv, k + b, -1):
        if w * B * (cv + b) * (m + n) + block <= limit:
            return cv
    need = w * B * (k + 2 * b + 1) * (m + n) + block
    raise ValueError(
        f"max_memory={budget!r} is below the smallest rank-{k} Lanczos solve of this operator: "
        f"{need / 2**30:.2f} GiB of bases and blocks for {B} sample(s) of {m} x {n}"
    )


def storage_for_budget(
    budget: int | str, ncv: int, b: int, B: int, m: int, n: int, dtype: torch.dtype, asked: str
) -> str:
    """The basis storage under a memory budget: a network whose products are float32 (or
    coarser) gets float32-stored bases when float64 ones would not fit at ``ncv``, before
    :func:`fit_ncv` lowers ``ncv``. Its products carry float32 rounding anyway and the sums stay
    in float64, so the answer is the same to that rounding, while a smaller basis would cost
    products."""
    if asked != "float64" or dtype.itemsize > 4:
        return asked
    block = 2 * B * b * (m + n) * dtype.itemsize
    fits = 8 * B * (ncv + b) * (m + n) + block <= parse_memory(budget)
    return "float64" if fits else "float32"
