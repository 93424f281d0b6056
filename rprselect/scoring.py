"""Score a pool: RPR (and LPR) for every sample, with the diagnostics to trust them.

For each sample x the scorer builds A[x] (:func:`~rprselect.linearize_batch`), takes its top-k
singular triplets (:func:`~rprselect.svd_batch`) and reports the Right Projection Ratio of x
(paper Eq. 10) at ranks 1..k; given labels it also reports the Left Projection Ratio of the
label map (Eq. 13). Samples go through the network in batches: the dense solver builds every
A[x_i] of a batch in one pass, and Lanczos iterates the batch's samples in lockstep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from .cache import ScoreCache, weights_hash
from .linearize import Method, linearize_batch
from .metrics import label_logits, lpr, rpr
from .pool import FilePool, PoolItem, check_item, iter_pool, pool_size
from .solvers import NotConvergedWarning, Solver, SolverConfig, SVDResult, svd, svd_batch
from .table import Failure, ScoreTable

__all__ = ["score", "ScoreTable", "Failure", "default_batch_size"]

Errors = Literal["auto", "raise", "record"]


def default_batch_size(sample_numel: int) -> int:
    """Samples per batch for a sample of ``sample_numel`` values: ``2**20 // numel`` in [1, 64].

    That is 64 for MNIST-sized images, 16 for 256x256 slices, 4 for a 64³ volume and 1 for a
    128³ four-channel one: each network pass then carries about a million input values per
    vector of the block.
    """
    return max(1, min(64, 2**20 // max(1, sample_numel)))


def _first_param(model: nn.Module) -> Tensor | None:
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def _labels_array(labels: Any, n: int | None) -> Tensor:
    lab = torch.as_tensor(np.asarray(labels))
    if lab.dim() != 1 or lab.is_floating_point():
        raise ValueError(
            f"labels must be a 1-D sequence of class indices, got shape "
            f"{tuple(lab.shape)} and dtype {lab.dtype}"
        )
    if n is not None and lab.numel() != n:
        raise ValueError(f"labels must have one entry per pool sample ({n}), got {lab.numel()}")
    return lab.long()


def _progress(total: int | None, enabled: bool) -> Any:
    class _Silent:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar then
        return _Silent()
    return tqdm(total=total, unit="sample", desc="scoring", dynamic_ncols=True)


def _validate(k: int, tol: float, solver: str, batch_size: int | None, errors: str) -> None:
    if solver not in ("auto", "dense", "lanczos", "slepc"):
        raise ValueError(
            f"solver must be one of 'auto', 'dense', 'lanczos', 'slepc', got {solver!r}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if errors not in ("auto", "raise", "record"):
        raise ValueError(f"errors must be 'auto', 'raise' or 'record', got {errors!r}")


def score(
    model: nn.Module,
    pool: Any,
    k: int = 10,
    tol: float = 1e-4,
    solver: str = "auto",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    cache: str | None = None,
    progress: bool = True,
    labels: Any = None,
    num_classes: int | None = None,
    config: SolverConfig | None = None,
    method: Method = "auto",
    ids: Sequence[str] | None = None,
    image_key: str = "image",
    errors: Errors = "auto",
    roi_size: Sequence[int] | None = None,
    sliding: Mapping[str, Any] | None = None,
    distributed: bool = False,
) -> ScoreTable:
    """RPR(x; r) for r = 1..k of every sample of a pool (paper Eq. 10), in one table.

    .. math:: \\mathrm{RPR}(x; r) = \\frac{\\|V_r[x] V_r^T[x] x\\|_2^2}{\\|x\\|_2^2}

    Args:
        model: the CNN; moved to ``device`` when one is given.
        pool: a tensor or array ``(N, C, *spatial)``, a ``Dataset`` (items: tensors,
            ``(tensor, label)`` tuples or dicts with ``image_key``), a ``DataLoader``, or a
            :class:`~rprselect.pool.FilePool` from :func:`~rprselect.pool.load_pool`.
        k: singular triplets per sample, ``0 < k <= min(m, n)`` of A[x].
        tol: relative residual tolerance of the solver.
        solver: ``"auto"``, ``"dense"``, ``"lanczos"`` or ``"slepc"`` (see :func:`~rprselect.svd`).
        device: where to run; default the model's device.
        batch_size: samples per batch; default :func:`default_batch_size` of the first sample.
        cache: a JSON Lines file (see :mod:`rprselect.cache`). Finished samples are appended
            after every batch; a rerun skips them, so a killed run resumes where it stopped.
            A cache written for other weights or settings raises ``ValueError``.
        progress: show a tqdm bar (samples/s) when tqdm is installed.
        labels: one class index per sample; adds the LPR of the paper's ±2 label map (Eq. 13).
            Needs a classifier with outputs ``(num_classes,)``.
        num_classes: number of classes; default the model's output size.
        config: solver knobs (:class:`~rprselect.SolverConfig`).
        method: how to linearise, see :func:`~rprselect.linearize`.
        ids: one id per sample; default the file names of a FilePool, else the positions.
        image_key: key of the image in dict items.
        errors: what to do with an unusable sample (unreadable file, NaN/Inf, all zeros,
            another shape): ``"raise"`` a ``ValueError`` naming it, or ``"record"`` it in
            ``ScoreTable.failures`` and go on; ``"auto"`` records for file pools and raises
            otherwise. A warning lists every recorded failure at the end.
        roi_size: score each volume through sliding windows of this size
            (:func:`rprselect.sliding.sliding_window_operator`, one sample at a time).
        sliding: further keyword arguments of ``sliding_window_operator`` (``overlap``,
            ``mode``, ``sw_batch_size``, ...); needs ``roi_size``.
        distributed: share the pool among the ranks of a torchrun launch
            (:func:`rprselect.distributed.score_distributed`); every rank gets the merged table.

    Returns:
        A :class:`ScoreTable`, one row per scored sample in pool order. Samples whose triplets
        missed ``tol`` have ``converged=False`` and one :class:`~rprselect.NotConvergedWarning`
        lists their ids.

    Raises:
        ValueError: an empty pool, bad settings (e.g. k > min(m, n)), a stale cache, or an
            unusable sample with ``errors="raise"``.
        TypeError: a model or pool of the wrong type.
    """
    if distributed:
        from .distributed import score_distributed

        return score_distributed(
            model,
            pool,
            k=k,
            tol=tol,
            solver=solver,
            device=device,
            batch_size=batch_size,
            cache=cache,
            progress=progress,
            labels=labels,
            num_classes=num_classes,
            config=config,
            method=method,
            ids=ids,
            image_key=image_key,
            errors=errors,
            roi_size=roi_size,
            sliding=sliding,
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _validate(k, tol, solver, batch_size, errors)
    if sliding is not None and roi_size is None:
        raise ValueError("sliding options need roi_size, got roi_size=None")
    window = None if roi_size is None else {"roi_size": tuple(roi_size), **(sliding or {})}
    config = config or SolverConfig()
    n = pool_size(pool)
    if n == 0:
        raise ValueError("pool must not be empty, got 0 samples")
    lab = _labels_array(labels, n) if labels is not None else None
    record = errors == "record" or (errors == "auto" and isinstance(pool, FilePool))
    if device is not None:
        model.to(device)
    p = _first_param(model)
    dev = (
        torch.device(device)
        if device is not None
        else (p.device if p is not None else torch.device("cpu"))
    )
    dtype = p.dtype if p is not None else torch.float32
    store = None
    if cache is not None:
        store = ScoreCache(
            cache, _fingerprint(model, k, tol, solver, method, config, lab, num_classes, window)
        )
    solve = _make_solver(model, k, tol, solver, method, config, lab, num_classes, window)

    rows: dict[int, dict[str, Any]] = {}
    failures: list[Failure] = []
    not_converged: list[str] = []
    pending: list[PoolItem] = []
    shape: tuple[int, ...] | None = None
    size = 1 if window is not None else batch_size
    bar = _progress(n, progress)

    def flush() -> None:
        X = torch.stack([it.x for it in pending if it.x is not None]).to(dev, dtype)
        new = solve(X, [it.index for it in pending])
        for it, row in zip(pending, new, strict=True):
            row = {"id": it.id, "index": it.index, **row}
            rows[it.index] = row
            if not row["converged"]:
                not_converged.append(it.id)
        if store is not None:
            store.append([rows[it.index] for it in pending])
        bar.update(len(pending))
        pending.clear()

    try:
        for item in iter_pool(pool, ids, image_key, skip=store.__contains__ if store else None):
            if store is not None and item.id in store:
                rows[item.index] = {**store.rows[item.id], "index": item.index}
                if not rows[item.index]["converged"]:
                    not_converged.append(item.id)
                bar.update(1)
                continue
            err = item.error or check_item(item, shape if window is None else None)
            if err is not None:
                if not record:
                    raise err
                failures.append(Failure(item.id, item.index, err.reason))
                bar.update(1)
                continue
            if shape is None and item.x is not None:
                shape = tuple(item.x.shape)
                size = size or default_batch_size(math.prod(shape))
            pending.append(item)
            if len(pending) >= (size or 1):
                flush()
        if pending:
            flush()
    finally:
        bar.close()
    if not rows and not failures:
        raise ValueError("pool must not be empty, got 0 samples")
    table = ScoreTable.from_rows([rows[i] for i in sorted(rows)], k=k, failures=failures)
    _warn(table, not_converged, failures, tol)
    return table


def _warn(table: ScoreTable, not_converged: list[str], failures: list[Failure], tol: float) -> None:
    if not_converged:
        shown = ", ".join(not_converged[:20]) + (", ..." if len(not_converged) > 20 else "")
        warnings.warn(
            f"{len(not_converged)} of {len(table)} samples have singular triplets "
            f"that missed tol={tol:g} (converged=False in the table): {shown}",
            NotConvergedWarning,
            stacklevel=3,
        )
    if failures:
        shown = "; ".join(f"{f.id}: {f.reason}" for f in failures[:10])
        more = f"; and {len(failures) - 10} more" if len(failures) > 10 else ""
        warnings.warn(
            f"{len(failures)} sample(s) could not be scored (see "
            f"ScoreTable.failures): {shown}{more}",
            UserWarning,
            stacklevel=3,
        )


Solve = Callable[[Tensor, list[int]], list[dict[str, Any]]]


def _make_solver(
    model: nn.Module,
    k: int,
    tol: float,
    solver: str,
    method: Method,
    config: SolverConfig,
    lab: Tensor | None,
    num_classes: int | None,
    window: dict[str, Any] | None,
) -> Solve:
    """The function that turns a batch ``X`` into table rows (without id and index)."""
    name = cast(Solver, solver)  # validated by the solver itself, which names the choices

    def batched(X: Tensor) -> tuple[SVDResult, tuple[int, ...]]:
        with warnings.catch_warnings():  # summarised once per pool by score()
            warnings.simplefilter("ignore", NotConvergedWarning)
            op = linearize_batch(model, X, method)
            return svd_batch(op, k=k, tol=tol, solver=name, config=config), op.out_shape

    def windowed(X: Tensor) -> tuple[SVDResult, tuple[int, ...]]:
        try:
            from .sliding import sliding_window_operator
        except ImportError as err:
            raise ImportError(
                f"roi_size needs rprselect.sliding, which failed to import: {err}"
            ) from err
        results: list[SVDResult] = []
        out_shape: tuple[int, ...] = ()
        for x in X:
            op = sliding_window_operator(model, x, method=method, **(window or {}))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotConvergedWarning)
                res = svd(op, k=k, tol=tol, solver=name, config=config)
            results.append(res)
            out_shape = op.out_shape
        return _stack(results), out_shape

    def solve(X: Tensor, index: list[int]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        res, out_shape = (windowed if window is not None else batched)(X)
        r = rpr(res, X).cpu()
        lcurve = None
        if lab is not None:
            c = (
                num_classes
                if num_classes is not None
                else (out_shape[0] if len(out_shape) == 1 else -1)
            )
            if tuple(out_shape) != (c,):
                raise ValueError(
                    f"labels need a classifier whose output has shape "
                    f"(num_classes,), got output shape {tuple(out_shape)}"
                )
            y = label_logits(lab[index], c).to(res.U.device)
            lcurve = lpr(res, y).cpu()
        seconds = (time.perf_counter() - t0) / X.shape[0]
        out = []
        for i in range(X.shape[0]):
            row: dict[str, Any] = {
                "rpr_curve": r[i].tolist(),
                "singular_values": res.S[i].double().cpu().tolist(),
                "converged": bool(res.converged[i].all()),
                "max_residual": float(res.residuals[i].max()),
                "n_products": int(res.n_products),
                "seconds": seconds,
            }
            if lcurve is not None:
                row["lpr_curve"] = lcurve[i].tolist()
            out.append(row)
        return out

    return solve


def _stack(results: list[SVDResult]) -> SVDResult:
    """One batched result from unbatched ones (each sample solved on its own)."""
    first = results[0]
    return dataclasses.replace(
        first,
        U=torch.stack([r.U for r in results]),
        S=torch.stack([r.S for r in results]),
        V=torch.stack([r.V for r in results]),
        residuals=torch.stack([r.residuals for r in results]),
        converged=torch.stack([r.converged for r in results]),
        n_products=max(r.n_products for r in results),
    )


def _fingerprint(
    model: nn.Module,
    k: int,
    tol: float,
    solver: str,
    method: str,
    config: SolverConfig,
    lab: Tensor | None,
    num_classes: int | None,
    window: dict[str, Any] | None,
) -> dict[str, Any]:
    labels = None
    if lab is not None:
        labels = hashlib.sha256(lab.cpu().numpy().astype(np.int64).tobytes()).hexdigest()
    return {
        "weights": weights_hash(model),
        "k": k,
        "tol": float(tol),
        "solver": solver,
        "method": method,
        "config": dataclasses.asdict(config),
        "labels": labels,
        "num_classes": num_classes,
        "window": window,
    }
