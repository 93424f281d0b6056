"""Score one pool with several processes (``torchrun``): disjoint batches, one merged table.

The pool is cut into *work units* ``u_j = [j b, \\min((j+1) b, N))``, the very batches of ``b``
samples that a single-process :func:`~rprselect.scoring.score` forms, so every batch meets the
same arithmetic whichever rank runs it and the merged table equals a single-process one
(timing apart). Ranks claim units one at a time from an atomic counter in the process group's
store (``store.add``), so a rank that drew cheap volumes (few Lanczos products) simply claims
more and all ranks finish within about one unit of each other.

Each rank appends its finished units to its own cache ``<cache>.rank{r}.jsonl`` (one durable
write per unit, :class:`~rprselect.cache.ScoreCache`). At start the ranks exchange the ids held
in their caches, so a restarted job, with any number of ranks, skips every unit finished by
any rank before it was killed and rescores only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    SequentialSampler,
    Subset,
    default_collate,
    default_convert,
)

from .cache import ScoreCache, rank_cache_path, read_all
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
from .engine import Engine
from .linearize import Method
from .pool import PoolItem, check_item, iter_pool, pool_size
from .ranks import Group, describe, is_distributed_launch, is_main_rank, join, raise_first
from .settings import DEFAULT_K, Errors, ScoreSettings, content_hash
from .solvers import SolverConfig
from .table import Failure, ScoreTable

__all__ = [
    "score",
    "score_distributed",
    "DistributedScoreTable",
    "RankStats",
    "rank_cache_path",
    "is_distributed_launch",
    "is_main_rank",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankStats:
    """What one rank did: units and samples scored in this run, and how long it was busy.

    ``busy_seconds`` covers loading, scoring and cache writes of its units; ``idle_seconds``
    is the wait at the end for the slowest rank.
    """

    rank: int
    units: int
    scored: int
    cached: int
    failed: int
    busy_seconds: float
    idle_seconds: float


@dataclass
class DistributedScoreTable(ScoreTable):
    """A :class:`~rprselect.scoring.ScoreTable` plus how the ranks shared the work.

    Attributes:
        world_size: number of ranks.
        unit_size: samples per work unit.
        ranks: per-rank :class:`RankStats`, by rank.
        wall_seconds: from the first claim to the merged table, on this rank.
    """

    world_size: int = 1
    unit_size: int = 1
    ranks: list[RankStats] = field(default_factory=list)
    wall_seconds: float = 0.0

    def summary(self) -> str:
        """One line: the work and busy time of every rank, and the imbalance max/mean busy."""
        busy = [s.busy_seconds for s in self.ranks]
        mean = float(np.mean(busy)) if busy else 0.0
        imbalance = max(busy) / mean if mean > 0 else 1.0
        parts = [
            f"rank {s.rank}: {s.units} units, {s.scored} scored, {s.cached} cached, "
            f"busy {s.busy_seconds:.2f} s, idle {s.idle_seconds:.2f} s"
            for s in self.ranks
        ]
        return (
            f"scored {len(self)} samples on {self.world_size} ranks in {self.wall_seconds:.2f} s "
            f"(unit {self.unit_size}, busy max/mean {imbalance:.3f}); " + "; ".join(parts)
        )


# -- the pool as random-access units -----------------------------------------------------------
def _random_access(pool: Any) -> Any:
    if isinstance(pool, DataLoader):
        plain = pool.collate_fn in (default_collate, default_convert)
        if not isinstance(pool.sampler, SequentialSampler) or not plain:
            raise TypeError(
                "pool must be random-access for distributed scoring: a tensor, an array, a "
                "map-style Dataset, or a DataLoader with sequential order and default collate; "
                "pass its dataset instead"
            )
        return pool.dataset
    return pool


def _load(pool: Any, positions: Sequence[int], names: list[str], image_key: str) -> list[PoolItem]:
    """The samples at ``positions`` as :class:`PoolItem` with their pool index."""
    if isinstance(pool, Tensor):
        part: Any = pool[torch.as_tensor(list(positions), dtype=torch.long)]
    elif isinstance(pool, np.ndarray):
        part = pool[np.asarray(positions, dtype=np.int64)]
    else:
        part = Subset(pool, list(positions))
    items = iter_pool(part, [names[p] for p in positions], image_key)
    return [PoolItem(p, it.id, it.x, it.error) for p, it in zip(positions, items, strict=True)]


@dataclass
class _Job:
    """Everything a rank needs to score a unit."""

    pool: Any
    names: list[str]
    settings: ScoreSettings
    engine: Engine
    device: torch.device
    dtype: torch.dtype
    size: int  # samples per unit
    record: bool
    known: dict[tuple[str, str], dict[str, Any]]  # (id, content) -> row, from every cache


def _score_unit(
    job: _Job, positions: Sequence[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Failure]]:
    """Score the samples at ``positions`` (one unit): rows from the caches where id and
    content match, the rest grouped by shape through the engine. Returns the new rows, the
    cached rows and the failures."""
    cached: list[dict[str, Any]] = []
    failures: list[Failure] = []
    groups: dict[tuple[int, ...], list[tuple[PoolItem, str]]] = {}
    for it in _load(job.pool, positions, job.names, job.settings.image_key):
        err = it.error or check_item(it, None)
        if err is not None:
            if not job.record:
                raise err
            failures.append(Failure(it.id, it.index, err.reason))
            continue
        assert it.x is not None
        h = content_hash(it.x)
        hit = job.known.get((it.id, h))
        if hit is not None:
            cached.append({**hit, "index": it.index})
        else:
            groups.setdefault(tuple(it.x.shape), []).append((it, h))
    new: list[dict[str, Any]] = []
    for items in groups.values():
        rows, bad = score_group(job.engine, items, job.device, job.dtype, job.record)
        new.extend(rows)
        failures.extend(bad)
    return new, cached, failures


# -- the entry point ---------------------------------------------------------------------------
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
    rank_delta: float = 0.01,
    settings: ScoreSettings | None = None,
) -> DistributedScoreTable:
    """:func:`~rprselect.score` shared among the ranks of a process group.

    Call it on every rank with the same model and pool. Under ``torchrun`` the process group
    is started from the environment when not yet initialised (NCCL on GPUs, gloo on CPU); the
    device defaults to ``cuda:LOCAL_RANK`` when CUDA is available. Outside any launch it runs
    as one rank. The units are the batches of a single-process run,

    .. math:: u_j = \\{jb, \\dots, \\min((j+1)b, N) - 1\\},

    with :math:`b` the batch size, each claimed by one rank through ``store.add``.

    Args:
        model, pool, labels, ids, settings and the setting keywords: as for
            :func:`rprselect.scoring.score`.
        device: as for ``score``; ``None`` or ``"cuda"`` mean ``cuda:LOCAL_RANK`` with CUDA.
        cache: base name of the caches. Each rank appends to its own file
            (:func:`~rprselect.cache.rank_cache_path`); every rank reads the base file and all
            rank files, so a rerun, with any number of ranks or in one process, reuses every
            row whose sample id and content match.
        progress: a progress bar of the whole pool on rank 0, and the balance on stderr.

    Returns:
        On every rank the same :class:`DistributedScoreTable`, one row per sample in pool
        order, equal to a single-process ``score`` apart from the timing columns (when no
        sample fails: a failed sample shifts the later batches of a single-process run, not
        the units).

    Raises:
        ValueError, TypeError: as for ``score``, and when ranks hold different weights,
            settings or pools. An error on one rank is raised on every rank.
    """
    s = settings_from(
        settings,
        k=k,
        tol=tol,
        solver=solver,
        method=method,
        config=config,
        batch_size=batch_size,
        device=None,  # chosen per rank below
        roi_size=roi_size,
        sliding=sliding,
        num_classes=num_classes,
        errors=errors,
        image_key=image_key,
        rank_delta=rank_delta,
    )
    if settings is None and device is not None:
        s = s.replace(device=device)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    group, dev = join(s.device)
    if dev is not None:
        s = s.replace(device=str(dev))
    job, own, token = _handshake(group, model, pool, ids, labels, s, cache)
    t0 = time.perf_counter()
    rows, failures, stats, err = _work(job, group, own, token, progress)
    totals = (*stats, len(failures), time.perf_counter() - t0)
    results = group.gather((describe(err) if err else None, rows, failures, totals))
    raise_first(group, err, [r[0] for r in results])
    k_used = job.engine.k or s.k or DEFAULT_K
    return _merge(results, k_used, job.size, group, time.perf_counter() - t0, progress, s.tol)


#: the name of releases before the scoring engine (kept for existing scripts)
score_distributed = score


def _handshake(
    group: Group,
    model: nn.Module,
    pool: Any,
    ids: Sequence[str] | None,
    labels: Any,
    s: ScoreSettings,
    cache: str | None,
) -> tuple[_Job, ScoreCache | None, str]:
    """Plan locally, then agree: same weights, settings and pool everywhere, and rank 0's
    token naming this run's counters in the store."""
    err: Exception | None = None
    try:  # all that can fail on one rank only comes before the first collective
        job, fp = _plan(model, pool, ids, labels, s)
        own = None
        if cache is not None:
            own = ScoreCache(rank_cache_path(cache, group.rank), fp)
            job.known = read_all(cache, fp, skip=own.path)
            job.known.update({(i, str(r.get("content"))): r for i, r in own.rows.items()})
        hello: Any = (None, _digest(fp), _digest(job.names), uuid.uuid4().hex)
    except Exception as e:  # re-raised below, on every rank
        err, hello = e, (describe(e), None, None, "")
    hellos = group.gather(hello)
    raise_first(group, err, [h[0] for h in hellos])
    for what, i in (("model weights and scoring settings", 1), ("pool (sample ids)", 2)):
        differ = [r for r, h in enumerate(hellos) if h[i] != hellos[0][i]]
        if differ:
            raise ValueError(f"every rank must have the same {what}; ranks {differ} differ")
    return job, own, hellos[0][3]


def _plan(
    model: nn.Module, pool: Any, ids: Sequence[str] | None, labels: Any, s: ScoreSettings
) -> tuple[_Job, dict[str, Any]]:
    """The units' common facts: ids, labels, the batch size, the engine (traced once)."""
    pool = _random_access(pool)
    n = pool_size(pool)
    if not n:
        raise ValueError("pool must not be empty, got 0 samples")
    names = _names(pool, ids, n)
    lab = None if labels is None else labels_array(labels, n)
    device, dtype = model_device(model, s)
    next(iter_pool(pool, names, s.image_key, model=model), None)  # refuses a pool of wrong rank
    shape = _first_usable(pool, names, s.image_key)
    size = batch_for(s, shape or (1,), n)
    fp = s.fingerprint(model, None if lab is None else lab.numpy())
    engine = Engine(model, s, lab)
    record = records_failures(s, pool)
    return _Job(pool, names, s, engine, device, dtype, size, record, {}), fp


def _work(
    job: _Job,
    group: Group,
    own: ScoreCache | None,
    token: str,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[Failure], tuple[float, int, int, int], Exception | None]:
    """Claim and score units until none is left (or a rank failed); cache each one."""
    n = len(job.names)
    units = [range(j, min(j + job.size, n)) for j in range(0, n, job.size)]
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    busy, claimed, scored, cached, err = 0.0, 0, 0, 0, None
    bar = progress_bar(n, progress and group.rank == 0)
    try:
        j = _claim(group, token, -1)
        while j < len(units) and group.add(f"rprselect/{token}/abort", 0) == 0:
            t = time.perf_counter()
            new, old, bad = _score_unit(job, units[j])
            if own is not None and new:
                own.append(new)
            busy += time.perf_counter() - t
            rows.extend(new + old)
            failures.extend(bad)
            claimed, scored, cached = claimed + 1, scored + len(new), cached + len(old)
            done = group.add(f"rprselect/{token}/done", len(units[j]))
            bar.n = done
            bar.refresh()
            j = _claim(group, token, j)
    except Exception as e:  # handed to every rank by the caller
        err = e
        group.add(f"rprselect/{token}/abort", 1)
    finally:
        bar.close()
    return rows, failures, (busy, claimed, scored, cached), err


def _claim(group: Group, token: str, last: int) -> int:
    """The next unit for this rank."""
    if group.store is None:  # static round robin
        return group.rank if last < 0 else last + group.world
    return group.add(f"rprselect/{token}/next", 1) - 1


def _names(pool: Any, ids: Sequence[str] | None, n: int) -> list[str]:
    from .pool import FilePool

    if ids is None:
        return list(pool.ids) if isinstance(pool, FilePool) else [str(i) for i in range(n)]
    names = [str(i) for i in ids]
    if len(names) != n:
        raise ValueError(f"ids must have one entry per sample ({n}), got {len(names)}")
    if len(set(names)) != n:
        raise ValueError("ids must be unique")
    return names


def _first_usable(pool: Any, names: list[str], key: str) -> tuple[int, ...] | None:
    for p in range(len(names)):
        it = _load(pool, [p], names, key)[0]
        if it.error is None and it.x is not None and check_item(it, None) is None:
            return tuple(it.x.shape)
    return None


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _merge(
    results: list[Any],
    k: int,
    size: int,
    group: Group,
    wall: float,
    show: bool,
    tol: float | str,
) -> DistributedScoreTable:
    """One table in pool order from every rank's rows, failures and stats."""
    rows: dict[int, dict[str, Any]] = {}
    for _, rank_rows, _, _ in results:
        for row in rank_rows:
            rows.setdefault(int(row["index"]), row)
    failures = sorted((f for r in results for f in r[2]), key=lambda f: f.index)
    last = max(r[3][5] for r in results)  # every rank started its clock at the same gather
    stats = [
        RankStats(r, s[1], s[2], s[3], s[4], s[0], last - s[5])
        for r, (_, _, _, s) in enumerate(results)
    ]
    base = ScoreTable.from_rows([rows[i] for i in sorted(rows)], k=k, failures=failures)
    table = DistributedScoreTable(
        **{f: getattr(base, f) for f in base.__dataclass_fields__},
        world_size=group.world,
        unit_size=size,
        ranks=stats,
        wall_seconds=wall,
    )
    if group.rank == 0:
        logger.info(table.summary())
        if show:
            print(f"rprselect: {table.summary()}", file=sys.stderr)
        warn_summary(table, tol, table.failures)
    return table
