"""The table of per-sample scores that :func:`~rprselect.score` returns: CSV, JSON, pandas."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ScoreTable", "Failure"]


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
        n_products: ``(N,)`` single-vector products A y or Aᵀ z spent on each sample (samples of
            a batch iterate in lockstep, so they share one count).
        batch_seconds: ``(N,)`` wall time of the whole batch the sample was scored in (a
            batch-level figure: every sample of a batch shows the same value).
        batch_size: ``(N,)`` number of samples in that batch.
        input_norm: ``(N,)`` the norm ``|x|`` of the sample as the model saw it.
        lpr_curve: ``(N, k)`` LPR of the label map at ranks 1..k (Eq. 13), when labels given.
        logits: ``(N, C)`` the model output ``F(x)`` of a classifier (outputs of at most
            :data:`MAX_LOGITS` values), else ``None``.
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
    batch_seconds: np.ndarray = None  # type: ignore[assignment]  # NaN when not measured
    batch_size: np.ndarray = None  # type: ignore[assignment]  # 1 when not known
    input_norm: np.ndarray = None  # type: ignore[assignment]  # NaN when not known
    lpr_curve: np.ndarray | None = None
    logits: np.ndarray | None = None
    failures: list[Failure] = field(default_factory=list)

    def __post_init__(self) -> None:  # tables built by hand may leave the diagnostics out
        n = len(self.ids)
        if self.batch_seconds is None:
            self.batch_seconds = np.full(n, np.nan)
        if self.batch_size is None:
            self.batch_size = np.ones(n, dtype=np.int64)
        if self.input_norm is None:
            self.input_norm = np.full(n, np.nan)

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
            "batch_seconds",
            "batch_size",
            "input_norm",
        ]
        cols += ["lpr", "lpr_curve"] if self.lpr_curve is not None else []
        return cols + (["logits"] if self.logits is not None else [])

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
            batch_seconds=self.batch_seconds[o],
            batch_size=self.batch_size[o],
            input_norm=self.input_norm[o],
            lpr_curve=None if self.lpr_curve is None else self.lpr_curve[o],
            logits=None if self.logits is None else self.logits[o],
            failures=list(self.failures),
        )

    def check_rankable(self) -> None:
        """Raise ``ValueError`` when the table cannot be ranked or selected from: an RPR that is
        NaN or infinite (it would sort last and never be proposed), or an id that appears more
        than once (a proposal would not say which sample it means). Both messages name ids.
        """
        bad = [self.ids[i] for i in np.flatnonzero(~np.isfinite(self.rpr))]
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(
                f"scores must hold a finite rpr for every row, got {len(bad)} NaN or infinite "
                f"value(s) for ids {shown}"
            )
        dup = sorted(i for i, c in Counter(self.ids).items() if c > 1)
        if dup:
            shown = ", ".join(dup[:5]) + (", ..." if len(dup) > 5 else "")
            raise ValueError(
                f"scores must have unique ids, got {len(dup)} id(s) on more than one row: {shown}"
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
        sizes = {len(r["logits"]) if r.get("logits") is not None else -1 for r in rows}
        has_logits = len(sizes) == 1 and -1 not in sizes  # outputs of one size, for all
        n_logits = len(rows[0]["logits"]) if has_logits else 0
        return cls(
            ids=[str(r["id"]) for r in rows],
            index=col("index", np.int64),
            rpr_curve=col("rpr_curve", np.float64, (k,)),
            singular_values=col("singular_values", np.float64, (k,)),
            converged=col("converged", bool),
            max_residual=col("max_residual", np.float64),
            n_products=col("n_products", np.int64),
            batch_seconds=col("batch_seconds", np.float64),
            batch_size=col("batch_size", np.int64),
            input_norm=col("input_norm", np.float64),
            lpr_curve=col("lpr_curve", np.float64, (k,)) if has_lpr else None,
            logits=col("logits", np.float64, (n_logits,)) if has_logits else None,
            failures=list(failures),
        )

    # -- files -------------------------------------------------------------------------------
    def to_csv(self, path: str | os.PathLike[str], *, lpr_rank: int | None = None) -> None:
        """Write one row per sample (written to a temporary file in the target's folder, then
        renamed into place).

        ``lpr_rank`` (``1 <= lpr_rank <= k``) puts the LPR at that rank in the summary column,
        then named ``lpr_at_<rank>`` instead of ``lpr`` (e.g. the demo's LPR@3: with 10 classes,
        LPR at rank 10 is always 1). The curve columns are unchanged.

        Columns: ``id, index, rpr, [lpr,] converged, max_residual, n_products, batch_seconds,
        batch_size, input_norm, rpr_1..rpr_k, sv_1..sv_k[, lpr_1..lpr_k][, logit_1..logit_C]``.
        Floats are written exactly (``repr``).
        """
        k = self.k
        if lpr_rank is not None and not (
            isinstance(lpr_rank, int) and 1 <= lpr_rank <= k and self.lpr_curve is not None
        ):
            raise ValueError(
                f"lpr_rank must satisfy 1 <= lpr_rank <= k = {k} on a table with LPR, got "
                f"{lpr_rank!r}" + ("" if self.lpr_curve is not None else " (the table has no LPR)")
            )
        lpr_name = "lpr" if lpr_rank is None or lpr_rank == k else f"lpr_at_{lpr_rank}"
        head = ["id", "index", "rpr"] + ([lpr_name] if self.lpr_curve is not None else [])
        head += _SCALARS
        head += [f"rpr_{r}" for r in range(1, k + 1)] + [f"sv_{r}" for r in range(1, k + 1)]
        if self.lpr_curve is not None:
            head += [f"lpr_{r}" for r in range(1, k + 1)]
        if self.logits is not None:
            head += [f"logit_{c}" for c in range(1, self.logits.shape[1] + 1)]
        atomic_write(path, lambda fh: self._write_csv(fh, head, (lpr_rank or k) - 1))

    def _write_csv(self, fh: Any, head: list[str], lpr_at: int = -1) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(head)
        for i in range(len(self)):
            row: list[Any] = [self.ids[i], int(self.index[i]), repr(float(self.rpr[i]))]
            if self.lpr_curve is not None:
                row.append(repr(float(self.lpr_curve[i, lpr_at])))
            row += [
                int(self.converged[i]),
                repr(float(self.max_residual[i])),
                int(self.n_products[i]),
                repr(float(self.batch_seconds[i])),
                int(self.batch_size[i]),
                repr(float(self.input_norm[i])),
            ]
            curves = [self.rpr_curve, self.singular_values]
            curves += [self.lpr_curve] if self.lpr_curve is not None else []
            curves += [self.logits] if self.logits is not None else []
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
            batch_seconds=column("batch_seconds", np.nan),
            batch_size=column("batch_size", 1).astype(np.int64),
            input_norm=column("input_norm", np.nan),
            lpr_curve=curve("lpr_", "lpr"),
            logits=curve("logit_", None),
        )

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write ``{"k", "rows": [...], "failures": [...]}`` (temporary file, then renamed)."""
        data = {
            "k": self.k,
            "rows": list(self.rows()),
            "failures": [dataclasses.asdict(f) for f in self.failures],
        }
        atomic_write(path, lambda fh: json.dump(data, fh, indent=1))

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
        for name in _SCALARS:
            cols[name] = getattr(self, name)
        for prefix, c in (
            ("rpr_", self.rpr_curve),
            ("sv_", self.singular_values),
            ("lpr_", self.lpr_curve),
            ("logit_", self.logits),
        ):
            if c is not None:
                cols.update({f"{prefix}{r + 1}": c[:, r] for r in range(c.shape[1])})
        return pd.DataFrame(cols)


_ROW_FIELDS = (
    "rpr_curve",
    "singular_values",
    "converged",
    "max_residual",
    "n_products",
    "batch_seconds",
    "batch_size",
    "input_norm",
    "lpr_curve",
    "logits",
)
_SCALARS = ["converged", "max_residual", "n_products", "batch_seconds", "batch_size", "input_norm"]
#: outputs of at most this many values are kept in the table as ``logits`` (classifiers)
MAX_LOGITS = 1024


def _plain(v: Any) -> Any:
    return v.tolist() if isinstance(v, np.ndarray | np.generic) else v


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the target's own folder, then rename it into place.

    The rename is atomic, so readers see the old file or the whole new one; on any error the
    temporary file is removed, and a target that is a folder is refused before anything is
    written.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        OSError: the folder does not exist or cannot be written.
    """
    target = os.fspath(path)
    if os.path.isdir(target):
        raise IsADirectoryError(
            f"cannot write {target}: it is a folder; give a file name, e.g. "
            f"{os.path.join(target, 'scores.csv')}"
        )
    folder, name = os.path.split(os.path.abspath(target))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", newline="") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
