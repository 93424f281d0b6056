"""Block size per network, input size and device, from a measured ``t(b) / t(1)``, cached on disk.

A block Lanczos step with ``b`` vectors costs one A pass and one Aᵀ pass carrying ``b``
vectors each. On a GPU, or with oneDNN on a CPU, a pass of ``b`` vectors costs far less than
``b`` passes of one until the device saturates (at 128³ a full-size UNet saturates a GPU at
b ≈ 2-4). A larger block needs more products to converge, though: the Krylov space grows in
steps of ``b`` and its degree, which drives convergence, only by one per step. With the
products of block size ``b`` modelled as ``P(b) ≈ P(1) (1 + g (b - 1))`` (``g = 0.4`` fits our
CPU runs at 32³: 154 -> 384 products from b = 1 to 4 on a flat spectrum, 74 -> 104 from 1 to 2
on a trained one), the solve time relative to ``b = 1`` is

.. math:: \\frac{T(b)}{T(1)} \\approx \\bigl(1 + g (b - 1)\\bigr)\\,\\frac{t(b)}{b\\, t(1)},

and :func:`choose_block_size` picks the ``b`` that minimises it, measuring ``t(b)`` once per
(network, input shape, dtype, device) and caching the timings in a JSON file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..operator import LinearOperator

__all__ = ["choose_block_size", "measure_pass_times", "default_cache", "GROWTH"]

#: modelled extra products per extra vector of the block (see the module docstring)
GROWTH = 0.4


def default_cache() -> Path:
    """``$RPRSELECT_CACHE/blocksize.json``, else ``~/.cache/rprselect/blocksize.json``."""
    root = os.environ.get("RPRSELECT_CACHE") or Path.home() / ".cache" / "rprselect"
    return Path(root) / "blocksize.json"


def _key(op: LinearOperator, network: str) -> str:
    raw = f"{network}|{op.in_shape}|{op.out_shape}|{op.n_samples}|{op.dtype}|{op.device}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pass_times(
    op: LinearOperator, candidates: Sequence[int], repeats: int = 2
) -> dict[int, float]:
    """Seconds of one A pass plus one Aᵀ pass with ``b`` vectors per sample, for each ``b``.

    The operator's counters are left as they were (a measurement, not solver work). Each
    timing is the best of ``repeats`` after one warm-up pass.
    """
    B = op.n_samples
    counts = op.n_products, op.n_passes
    times: dict[int, float] = {}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for b in candidates:
            Y = torch.randn(B, b, *op.in_shape, generator=gen).to(op.device, op.dtype)
            Z = torch.randn(B, b, *op.out_shape, generator=gen).to(op.device, op.dtype)
            best = float("inf")
            for i in range(repeats + 1):
                _synchronize(op.device)
                t0 = time.perf_counter()
                op.apply(Y)
                op.apply(Z, adjoint=True)
                _synchronize(op.device)
                if i:  # the first is the warm-up
                    best = min(best, time.perf_counter() - t0)
            times[b] = best
    op.n_products, op.n_passes = counts
    return times


def choose_block_size(
    op: LinearOperator,
    network: str,
    candidates: Sequence[int] = (1, 2, 4, 8),
    cache: str | Path | None = None,
    growth: float = GROWTH,
) -> tuple[int, dict[int, float]]:
    """The block size minimising the modelled solve time, measured once and then cached.

    Args:
        op: the operator to solve (its shapes, dtype and device key the cache).
        network: a name of the network and its weights' shapes, e.g. ``repr(model)``.
        candidates: block sizes to try, each ``>= 1``.
        cache: the JSON cache file (default :func:`default_cache`); ``None`` uses the default.
        growth: ``g`` of the product model.

    Returns:
        ``(b, {b: seconds of one A and one Aᵀ pass})``.

    Raises:
        ValueError: an empty candidate list or a block size below 1.
    """
    sizes = sorted({int(b) for b in candidates})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"candidates must be block sizes >= 1, got {list(candidates)}")
    path = Path(cache) if cache is not None else default_cache()
    key = _key(op, network)
    stored: dict[str, dict[str, float]] = {}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
    times = {int(b): t for b, t in stored.get(key, {}).items()}
    missing = [b for b in sizes if b not in times]
    if missing:
        times.update(measure_pass_times(op, missing))
        stored[key] = {str(b): t for b, t in sorted(times.items())}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=1, sort_keys=True))
    t1 = times.get(1) or times[sizes[0]] / sizes[0]

    def cost(b: int) -> float:
        return (1 + growth * (b - 1)) * times[b] / (b * t1)

    best = min(sizes, key=cost)
    return best, {b: times[b] for b in sizes}
