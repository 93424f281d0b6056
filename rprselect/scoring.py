"""Score a pool in one process: RPR (and LPR) for every sample, with the diagnostics to trust them.

This is the single-process driver over :mod:`rprselect.engine`. It walks the pool in order,
hashes each sample's content (the cache key next to its id), reuses cached rows whose id and
content match, groups the rest by shape and hands each full group to the engine as a batch.
The torchrun driver (:mod:`rprselect.distributed`) does the same over work units; the two share
:class:`~rprselect.ScoreSettings`, the engine, the cache format and the end-of-run report, so a
cache written by either resumes under the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .cache import ScoreCache, read_all
from .driving import (
    batch_for,
    labels_array,
    model_device,
    progress_bar,
    records_failures,
    score_group,
    settings_from,
    warn_summary,
)
from .engine import Engine, default_batch_size
from .linearize import Method
from .pool import PoolItem, PoolItemError, check_item, iter_pool, pool_size
from .settings import DEFAULT_K, Errors, ScoreSettings, content_hash
from .solvers import SolverConfig
from .table import Failure, ScoreTable

__all__ = ["score", "ScoreTable", "Failure", "default_batch_size", "ScoreSettings"]


def score(
    model: nn.Module,
    pool: Any,
    *,
    k: int | None = None,
    tol: float | str = 1e-4,
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
    rank_delta: float = 0.01,
    settings: ScoreSettings | None = None,
) -> ScoreTable:
    """RPR(x; r) for r = 1..k of every sample of a pool (paper Eq. 10), in one table.

    .. math:: \\mathrm{RPR}(x; r) = \\frac{\\|V_r[x] V_r^T[x] x\\|_2^2}{\\|x\\|_2^2}

    Args:
        model: the CNN; moved to ``device`` when one is given.
        pool: a tensor or array ``(N, C, *spatial)``, a ``Dataset`` (items: tensors,
            ``(tensor, label)`` tuples or dicts with ``image_key``), a ``DataLoader`` in
            sequential order, or a :class:`~rprselect.pool.FilePool` from
            :func:`~rprselect.pool.load_pool`.
        k, tol, solver, device, batch_size, num_classes, config, method, image_key, errors,
            roi_size, sliding, rank_delta: the settings, as in :class:`~rprselect.ScoreSettings`
            (``k=None`` takes ``min(10, min(m, n))`` for the model).
        cache: a JSON Lines file (see :mod:`rprselect.cache`). Finished samples are appended
            after every batch; a rerun (in one process or under torchrun) reuses every row
            whose sample id *and content* match, so a killed run resumes where it stopped and a
            changed file is scored again. A cache written for other weights or settings raises
            ``ValueError``.
        progress: show a tqdm bar (samples/s) when tqdm is installed.
        labels: one class index per sample; adds the LPR of the paper's ±2 label map (Eq. 13).
            Needs a classifier with outputs ``(num_classes,)``.
        ids: one id per sample; default the file names of a FilePool, else the positions.
        distributed: share the pool among the ranks of a torchrun launch
            (:func:`rprselect.distributed.score`); every rank gets the merged table.
        settings: all the settings in one :class:`~rprselect.ScoreSettings`, instead of the
            keywords it holds (not both).

    Returns:
        A :class:`ScoreTable`, one row per scored sample in pool order. Samples whose triplets
        missed ``tol`` have ``converged=False`` and one :class:`~rprselect.NotConvergedWarning`
        lists their ids.

    Raises:
        ValueError: an empty pool, bad settings (e.g. k > min(m, n)), a stale cache, or an
            unusable sample with ``errors="raise"``.
        TypeError: a model, pool or setting of the wrong type.
    """
    s = settings_from(
        settings,
        k=k,
        tol=tol,
        solver=solver,
        method=method,
        config=config,
        batch_size=batch_size,
        device=device,
        roi_size=roi_size,
        sliding=sliding,
        num_classes=num_classes,
        errors=errors,
        image_key=image_key,
        rank_delta=rank_delta,
    )
    if distributed:  # the torchrun driver, imported only when asked for
        from . import distributed as torchrun

        return torchrun.score(
            model, pool, settings=s, cache=cache, progress=progress, labels=labels, ids=ids
        )
    return _Run(model, pool, s, labels, ids).go(cache, progress)


class _Run:
    """One call of :func:`score`: the pool walk, the shape groups and the cache."""

    def __init__(
        self, model: nn.Module, pool: Any, s: ScoreSettings, labels: Any, ids: Any
    ) -> None:
        self.device, self.dtype = model_device(model, s)
        self.n = pool_size(pool)
        if self.n == 0:
            raise ValueError("pool must not be empty, got 0 samples")
        lab = labels_array(labels, self.n) if labels is not None else None
        self.pool, self.ids, self.s, self.model, self.labels = pool, ids, s, model, lab
        self.record = records_failures(s, pool)
        self.rows: dict[int, dict[str, Any]] = {}
        self.failures: list[Failure] = []

    def go(self, cache: str | None, progress: bool) -> ScoreTable:
        s = self.s
        store, known = None, {}
        if cache is not None:
            fp = s.fingerprint(self.model, None if self.labels is None else self.labels.numpy())
            known = read_all(cache, fp)
            store = ScoreCache(cache, fp)
        engine = Engine(self.model, s, self.labels)
        groups: dict[tuple[int, ...], list[tuple[PoolItem, str]]] = {}
        bar = progress_bar(self.n, progress)

        def flush(shape: tuple[int, ...]) -> None:
            items = groups.pop(shape)
            new, bad = score_group(engine, items, self.device, self.dtype, self.record)
            for row in new:
                self.rows[row["index"]] = row
            self.failures.extend(bad)
            if store is not None and new:
                store.append(new)
            bar.update(len(items))

        try:
            for item in iter_pool(self.pool, self.ids, s.image_key, model=self.model):
                err = item.error or check_item(item, None)
                if err is not None:
                    self._fail(err)
                    bar.update(1)
                    continue
                assert item.x is not None
                h = content_hash(item.x)
                hit = known.get((item.id, h))
                if hit is not None:
                    self.rows[item.index] = {**hit, "index": item.index}
                    bar.update(1)
                    continue
                shape = tuple(item.x.shape)
                groups.setdefault(shape, []).append((item, h))
                if len(groups[shape]) >= batch_for(s, shape, self.n):
                    flush(shape)
            for shape in list(groups):
                flush(shape)
        finally:
            bar.close()
        if not self.rows and not self.failures:
            raise ValueError("pool must not be empty, got 0 samples")
        k = engine.k or s.k or DEFAULT_K
        table = ScoreTable.from_rows(
            [self.rows[i] for i in sorted(self.rows)], k=k, failures=self.failures
        )
        warn_summary(table, s.tol, self.failures)
        return table

    def _fail(self, err: PoolItemError) -> None:
        if not self.record:
            raise err
        self.failures.append(Failure(err.item_id, err.index, err.reason))
