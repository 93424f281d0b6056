"""Score a pool: RPR (and LPR) for every sample, with the diagnostics to trust them.

For each sample x the scorer builds A[x] (:func:`~rprselect.linearize_batch`), takes its top-k
singular triplets (:func:`~rprselect.svd_batch`) and reports the Right Projection Ratio of x
(paper Eq. 10) at ranks 1..k; given labels it also reports the Left Projection Ratio of the
label map (Eq. 13). Samples go through the network in batches: the dense solver builds every
A[x_i] of a batch in one pass, and Lanczos iterates the batch's samples in lockstep.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from .cache import ScoreCache, weights_hash
from .linearize import Method, linearize_batch
from .metrics import label_logits, lpr, rpr
from .pool import FilePool, PoolItem, check_item, iter_pool, pool_size
from .solvers import NotConvergedWarning, Solver, SolverConfig, SVDResult, svd, svd_batch

__all__ = ["score", "ScoreTable", "Failure", "default_batch_size"]

Errors = Literal["auto", "raise", "record"]


@dataclass(frozen=True)
class Failure:
    """A sample that could not be scored: its id, position in the pool, and why."""

    id: str
    index: int
    reason: str


@dataclass
class ScoreTable:
    """Per-sample scores of a pool, one row per scored sample (columns as numpy arrays).

    Attributes:
        ids: sample ids (file names for file pools, else the given ids or the positions).
        index: position of each sample in the pool.
        rpr_curve: ``(N, k)`` RPR at ranks 1..k (Eq. 10), non-decreasing along a row.
        singular_values: ``(N, k)`` the top-k singular values of each A[x].
        converged: ``(N,)`` whether all k triplets reached the tolerance.
        max_residual: ``(N,)`` largest relative residual of the k triplets.
        n_products: ``(N,)`` single-vector products A y or Aᵀ z spent per sample.
        seconds: ``(N,)`` wall time per sample (batch time / batch size).
        lpr_curve: ``(N, k)`` LPR of the label map at ranks 1..k (Eq. 13), when labels given.
        failures: samples that could not be scored, with the reason.

    ``table.rpr`` (and ``table.lpr``) is the value at rank k; ``table["rpr"]`` is the same
    column by name, and ``table["id"]`` the ids as an array.
    """

    ids: list[str]
    index: np.ndarray
    rpr_curve: np.ndarray
    singular_values: np.ndarray
    converged: np.ndarray
    max_residual: np.ndarray
    n_products: np.ndarray
    seconds: np.ndarray
    lpr_curve: np.ndarray | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def k(self) -> int:
        return int(self.rpr_curve.shape[1])

    @property
    def rpr(self) -> np.ndarray:
        """RPR at rank k, ``(N,)``."""
        return self.rpr_curve[:, -1]

    @property
    def lpr(self) -> np.ndarray | None:
        """LPR at rank k, ``(N,)``, or ``None`` without labels."""
        return None if self.lpr_curve is None else self.lpr_curve[:, -1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, column: str) -> np.ndarray:
        """A column by name: ``"id"``, ``"rpr"``, ``"lpr"``, ``"rpr_curve"``, ..."""
        if column == "id":
            return np.asarray(self.ids, dtype=str)
        if column in _ROW_FIELDS or column in ("rpr", "lpr", "index"):
            value = getattr(self, column)
            if value is not None:
                return np.asarray(value)
        raise KeyError(f"column must be one of {self.columns}, got {column!r}")

    @property
    def columns(self) -> list[str]:
        cols = [
            "id",
            "index",
            "rpr",
            "rpr_curve",
            "singular_values",
            "converged",
            "max_residual",
            "n_products",
            "seconds",
        ]
        return cols + (["lpr", "lpr_curve"] if self.lpr_curve is not None else [])

    def rows(self) -> Iterator[dict[str, Any]]:
        """Each row as a dict (curves as lists), in table order."""
        for i in range(len(self)):
            yield {
                "id": self.ids[i],
                "index": int(self.index[i]),
                "rpr": float(self.rpr[i]),
                **({"lpr": float(self.lpr_curve[i, -1])} if self.lpr_curve is not None else {}),
                **{
                    f: _plain(getattr(self, f)[i])
                    for f in _ROW_FIELDS
                    if getattr(self, f) is not None
                },
            }

    def take(self, order: Sequence[int] | np.ndarray) -> ScoreTable:
        """The rows at positions ``order`` (of this table), in that order."""
        o = np.asarray(order, dtype=np.int64)
        return ScoreTable(
            ids=[self.ids[i] for i in o],
            index=self.index[o],
            rpr_curve=self.rpr_curve[o],
            singular_values=self.singular_values[o],
            converged=self.converged[o],
            max_residual=self.max_residual[o],
            n_products=self.n_products[o],
            seconds=self.seconds[o],
            lpr_curve=None if self.lpr_curve is None else self.lpr_curve[o],
            failures=list(self.failures),
        )

    def ranked(self) -> ScoreTable:
        """Rows by ascending RPR at rank k (most likely to fail first); ties keep pool order."""
        return self.take(np.argsort(self.rpr, kind="stable"))

    @classmethod
    def from_rows(
        cls, rows: Sequence[dict[str, Any]], k: int, failures: Sequence[Failure] = ()
    ) -> ScoreTable:
        """Build a table from row dicts as :func:`score` and the cache write them."""

        def col(name: str, dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
            return np.asarray([r[name] for r in rows], dtype=dtype).reshape(len(rows), *shape)

        has_lpr = bool(rows) and all("lpr_curve" in r for r in rows)
        return cls(
            ids=[str(r["id"]) for r in rows],
            index=col("index", np.int64),
            rpr_curve=col("rpr_curve", np.float64, (k,)),
            singular_values=col("singular_values", np.float64, (k,)),
            converged=col("converged", bool),
            max_residual=col("max_residual", np.float64),
            n_products=col("n_products", np.int64),
            seconds=col("seconds", np.float64),
            lpr_curve=col("lpr_curve", np.float64, (k,)) if has_lpr else None,
            failures=list(failures),
        )

    # -- files -------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write one row per sample (written to a temporary file, then renamed into place).

        Columns: ``id, index, rpr, [lpr,] converged, max_residual, n_products, seconds,
        rpr_1..rpr_k, sv_1..sv_k[, lpr_1..lpr_k]``. Floats are written exactly (``repr``).
        """
        k = self.k
        head = ["id", "index", "rpr"] + (["lpr"] if self.lpr_curve is not None else [])
        head += ["converged", "max_residual", "n_products", "seconds"]
        head += [f"rpr_{r}" for r in range(1, k + 1)] + [f"sv_{r}" for r in range(1, k + 1)]
        if self.lpr_curve is not None:
            head += [f"lpr_{r}" for r in range(1, k + 1)]
        _atomic_write(path, lambda fh: self._write_csv(fh, head))

    def _write_csv(self, fh: Any, head: list[str]) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(head)
        for i in range(len(self)):
            row: list[Any] = [self.ids[i], int(self.index[i]), repr(float(self.rpr[i]))]
            if self.lpr_curve is not None:
                row.append(repr(float(self.lpr_curve[i, -1])))
            row += [
                int(self.converged[i]),
                repr(float(self.max_residual[i])),
                int(self.n_products[i]),
                repr(float(self.seconds[i])),
            ]
            curves = [self.rpr_curve, self.singular_values]
            curves += [self.lpr_curve] if self.lpr_curve is not None else []
            row += [repr(float(v)) for c in curves for v in c[i]]
            w.writerow(row)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> ScoreTable:
        """Read a table written by :meth:`to_csv`, or any CSV with at least ``id`` and ``rpr``
        columns (then k = 1 and the missing diagnostics are NaN, zero or True).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file lacks an ``id`` or ``rpr`` column, or a value is malformed.
        """
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            data = list(reader)
        missing = [c for c in ("id", "rpr") if c not in fields]
        if missing:
            raise ValueError(
                f"scores file {os.fspath(path)} must have columns id and rpr, got {fields}"
            )

        def floats(names: list[str]) -> np.ndarray:
            try:
                return np.asarray(
                    [[float(r[c]) for c in names] for r in data], dtype=np.float64
                ).reshape(len(data), len(names))
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"scores file {os.fspath(path)} holds a malformed number: {err}"
                ) from err

        def curve(prefix: str, fallback: str | None) -> np.ndarray | None:
            names = [c for c in fields if c.startswith(prefix) and c[len(prefix) :].isdigit()]
            names.sort(key=lambda c: int(c[len(prefix) :]))
            if names:
                return floats(names)
            return floats([fallback]) if fallback is not None and fallback in fields else None

        n = len(data)
        rpr_curve = curve("rpr_", "rpr")
        if rpr_curve is None:  # unreachable: "rpr" is in fields
            raise ValueError(f"scores file {os.fspath(path)} has no rpr column")
        k = rpr_curve.shape[1]

        def column(name: str, default: float) -> np.ndarray:
            return floats([name])[:, 0] if name in fields else np.full(n, default)

        sv = curve("sv_", None)
        return cls(
            ids=[r["id"] for r in data],
            index=column("index", np.nan).astype(np.int64)
            if "index" in fields
            else np.arange(n, dtype=np.int64),
            rpr_curve=rpr_curve,
            singular_values=sv if sv is not None else np.full((n, k), np.nan),
            converged=column("converged", 1).astype(bool),
            max_residual=column("max_residual", np.nan),
            n_products=column("n_products", 0).astype(np.int64),
            seconds=column("seconds", np.nan),
            lpr_curve=curve("lpr_", "lpr"),
        )

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``{"k", "rows": [...], "failures": [...]}`` (temporary file, then renamed)."""
        data = {
            "k": self.k,
            "rows": list(self.rows()),
            "failures": [dataclasses.asdict(f) for f in self.failures],
        }
        _atomic_write(path, lambda fh: json.dump(data, fh, indent=1))

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` with the CSV's columns.

        Raises:
            ImportError: pandas is missing (``pip install 'rprselect[extras]'``).
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("to_pandas needs pandas: pip install 'rprselect[extras]'") from err
        cols: dict[str, Any] = {"id": self.ids, "index": self.index, "rpr": self.rpr}
        if self.lpr_curve is not None:
            cols["lpr"] = self.lpr_curve[:, -1]
        for name in ("converged", "max_residual", "n_products", "seconds"):
            cols[name] = getattr(self, name)
        for prefix, c in (
            ("rpr_", self.rpr_curve),
            ("sv_", self.singular_values),
            ("lpr_", self.lpr_curve),
        ):
            if c is not None:
                cols.update({f"{prefix}{r + 1}": c[:, r] for r in range(self.k)})
        return pd.DataFrame(cols)


_ROW_FIELDS = (
    "rpr_curve",
    "singular_values",
    "converged",
    "max_residual",
    "n_products",
    "seconds",
    "lpr_curve",
)


def _plain(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray | np.generic) else v


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", newline="") as fh:
        write(fh)
    os.replace(tmp, path)


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

    Returns:
        A :class:`ScoreTable`, one row per scored sample in pool order. Samples whose triplets
        missed ``tol`` have ``converged=False`` and one :class:`~rprselect.NotConvergedWarning`
        lists their ids.

    Raises:
        ValueError: an empty pool, bad settings (e.g. k > min(m, n)), a stale cache, or an
            unusable sample with ``errors="raise"``.
        TypeError: a model or pool of the wrong type.
    """
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
