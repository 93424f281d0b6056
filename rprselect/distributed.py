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

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import (
    DataLoader,
    SequentialSampler,
    Subset,
    default_collate,
    default_convert,
)

from .cache import ScoreCache, weights_hash
from .linearize import Method
from .pool import FilePool, PoolItem, check_item, iter_pool, pool_size
from .scoring import default_batch_size, score
from .solvers import NotConvergedWarning, SolverConfig
from .table import Failure, ScoreTable

__all__ = [
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
        batch_size: samples per work unit.
        ranks: per-rank :class:`RankStats`, by rank.
        wall_seconds: from the first claim to the merged table, on this rank.
    """

    world_size: int = 1
    batch_size: int = 1
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
            f"(batch {self.batch_size}, busy max/mean {imbalance:.3f}); " + "; ".join(parts)
        )


# -- process group -----------------------------------------------------------------------------
def is_distributed_launch() -> bool:
    """Whether this process is one of several: ``WORLD_SIZE > 1`` (torchrun) or a group > 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_rank() -> bool:
    """Whether this process is rank 0 (also true outside any distributed launch)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def rank_cache_path(cache: str | os.PathLike[str], rank: int) -> Path:
    """The cache file of ``rank``: ``scores.cache.jsonl`` -> ``scores.cache.rank3.jsonl``."""
    p = Path(cache)
    if p.suffix:
        return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")
    return p.with_name(f"{p.name}.rank{rank}")


def _cache_files(cache: str | os.PathLike[str]) -> dict[int, Path]:
    """Every existing rank cache of ``cache``, by rank."""
    p = Path(cache)
    head, _, tail = rank_cache_path(p, 0).name.rpartition(".rank0")
    found: dict[int, Path] = {}
    for f in p.parent.glob(f"{head}.rank*{tail}"):
        r = f.name[len(head) + 5 : len(f.name) - len(tail)]
        if r.isdigit():
            found[int(r)] = f
    return found


class _Group:
    """Rank, world size, object all-gather and an atomic counter (a store, or None)."""

    def __init__(self) -> None:
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.store: Any = None
        if self.on:
            try:
                self.store = dist.distributed_c10d._get_default_store()
            except (AttributeError, RuntimeError, ValueError):  # private API: fall back
                self.store = None  # to a static round-robin assignment of the units
        self._local: dict[str, int] = {}

    def gather(self, obj: Any) -> list[Any]:
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def add(self, key: str, n: int) -> int:
        """Atomically add ``n`` to counter ``key``; returns the new value."""
        if self.world == 1 or self.store is None:
            self._local[key] = self._local.get(key, 0) + n
            return self._local[key]
        return int(self.store.add(key, n))


def _join(device: str | torch.device | None) -> tuple[_Group, torch.device | None]:
    """Join (or start, from the torchrun environment) the process group; pick the device."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = None if device is None else torch.device(device)
    if torch.cuda.is_available() and (dev is None or (dev.type == "cuda" and dev.index is None)):
        dev = torch.device("cuda", local)
    if dev is not None and dev.type == "cuda":
        torch.cuda.set_device(dev)
    if is_distributed_launch() and not dist.is_initialized():
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        dist.init_process_group("nccl" if dev is not None and dev.type == "cuda" else "gloo")
        # Kept for later calls (a second init on the same store reads stale addresses), and
        # ended at exit: a gloo group alive at interpreter shutdown can abort the process.
        atexit.register(_end_group)
    return _Group(), dev


def _end_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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
    image_key: str
    shape: tuple[int, ...] | None  # of the first usable sample: every other must match
    first: int  # its position; samples before it are checked without a shape, as score() does
    size: int  # samples per unit
    record: bool
    lab: np.ndarray | None
    kwargs: dict[str, Any]  # for score(), one batch per call


def _score_unit(job: _Job, positions: Sequence[int]) -> tuple[list[dict[str, Any]], list[Failure]]:
    """Score the samples at ``positions`` (one unit, less its cached samples) as one batch."""
    good: list[PoolItem] = []
    failures: list[Failure] = []
    for it in _load(job.pool, positions, job.names, job.image_key):
        shape = job.shape if it.index > job.first else None
        err = it.error or check_item(it, shape if job.kwargs["roi_size"] is None else None)
        if err is not None:
            if not job.record:
                raise err
            failures.append(Failure(it.id, it.index, err.reason))
        else:
            good.append(it)
    if not good:
        return [], failures
    index = [it.index for it in good]
    with warnings.catch_warnings():  # summarised once per pool, on rank 0
        warnings.simplefilter("ignore", NotConvergedWarning)
        table = score(
            **job.kwargs,
            pool=torch.stack([it.x for it in good if it.x is not None]),
            batch_size=len(good),
            labels=None if job.lab is None else job.lab[index],
            ids=[it.id for it in good],
        )
    rows = []
    for row, p in zip(table.rows(), index, strict=True):
        row.pop("rpr")
        row.pop("lpr", None)
        rows.append({**row, "index": p})
    return rows, failures


# -- the entry point ---------------------------------------------------------------------------
def score_distributed(
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
    errors: Literal["auto", "raise", "record"] = "auto",
    roi_size: Sequence[int] | None = None,
    sliding: Mapping[str, Any] | None = None,
) -> DistributedScoreTable:
    """:func:`~rprselect.scoring.score` shared among the ranks of a process group.

    Call it on every rank with the same model and pool. Under ``torchrun`` the process group
    is started from the environment when not yet initialised (NCCL on GPUs, gloo on CPU); the
    device defaults to ``cuda:LOCAL_RANK`` when CUDA is available. Outside any launch it runs
    as one rank. The units are the batches of a single-process run,

    .. math:: u_j = \\{jb, \\dots, \\min((j+1)b, N) - 1\\},

    with :math:`b` the batch size, each claimed by one rank through ``store.add``.

    Args:
        model, pool, k, tol, solver, batch_size, labels, num_classes, config, method, ids,
            image_key, errors, roi_size, sliding: as for :func:`~rprselect.scoring.score`.
        device: as for ``score``; ``None`` or ``"cuda"`` mean ``cuda:LOCAL_RANK`` with CUDA.
        cache: base name of the per-rank caches (:func:`rank_cache_path`). A rerun, with any
            number of ranks, skips every sample that any rank's cache holds.
        progress: a progress bar of the whole pool on rank 0, and the balance on stderr.

    Returns:
        On every rank the same :class:`DistributedScoreTable`, one row per sample in pool
        order, equal to a single-process ``score`` apart from ``seconds`` (when no sample
        fails: a failed sample shifts the later batches of a single-process run, not the units).

    Raises:
        ValueError, TypeError: as for ``score``, and when ranks hold different weights,
            settings or pools. An error on one rank is raised on every rank.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not batch_size > 0):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if errors not in ("auto", "raise", "record"):
        raise ValueError(f"errors must be 'auto', 'raise' or 'record', got {errors!r}")
    opts: dict[str, Any] = dict(k=k, tol=tol, solver=solver, config=config or SolverConfig())
    opts.update(method=method, num_classes=num_classes, roi_size=roi_size, sliding=sliding)
    record = errors == "record" or (errors == "auto" and isinstance(pool, FilePool))
    group, dev = _join(device)
    if dev is not None:
        model.to(dev)
    job, own, old, done, token = _handshake(
        group, model, pool, ids, labels, image_key, record, batch_size, dev, cache, opts
    )
    t0 = time.perf_counter()
    rows, failures, stats, err = _work(job, group, own, done, token, progress)
    where = {sid: p for p, sid in enumerate(job.names)}
    mine = [{**r, "index": where[i]} for i, r in old.items() if i in where]
    totals = (*stats, len(mine), len(failures), time.perf_counter() - t0)
    results = group.gather((_describe(err) if err else None, rows + mine, failures, totals))
    _raise_first(group, err, [r[0] for r in results])
    return _merge(results, k, job.size, group, time.perf_counter() - t0, progress)


def _handshake(
    group: _Group,
    model: nn.Module,
    pool: Any,
    ids: Sequence[str] | None,
    labels: Any,
    image_key: str,
    record: bool,
    batch_size: int | None,
    dev: torch.device | None,
    cache: str | None,
    opts: dict[str, Any],
) -> tuple[_Job, ScoreCache | None, dict[str, dict[str, Any]], set[str], str]:
    """Plan locally, then agree: same weights, settings and pool everywhere, the union of the
    ids all caches hold, and rank 0's token naming this run's counters in the store."""
    err: Exception | None = None
    try:  # all that can fail on one rank only comes before the first collective
        job = _plan(model, pool, ids, labels, image_key, record, batch_size, dev, opts)
        fp = _fingerprint(model, job.lab, opts)
        own, old = _open_caches(cache, fp, group)
        hello: Any = (None, _digest(fp), _digest(job.names), sorted(old), uuid.uuid4().hex)
    except Exception as e:  # re-raised below, on every rank
        err, hello = e, (_describe(e), None, None, [], "")
    hellos = group.gather(hello)
    _raise_first(group, err, [h[0] for h in hellos])
    for what, i in (("model weights and scoring settings", 1), ("pool (sample ids)", 2)):
        differ = [r for r, h in enumerate(hellos) if h[i] != hellos[0][i]]
        if differ:
            raise ValueError(f"every rank must have the same {what}; ranks {differ} differ")
    return job, own, old, {sid for h in hellos for sid in h[3]}, hellos[0][4]


def _plan(
    model: nn.Module,
    pool: Any,
    ids: Sequence[str] | None,
    labels: Any,
    image_key: str,
    record: bool,
    batch_size: int | None,
    dev: torch.device | None,
    opts: dict[str, Any],
) -> _Job:
    """The units' common facts: ids, labels, the first usable sample's shape, batch size."""
    pool = _random_access(pool)
    n = pool_size(pool)
    if not n:
        raise ValueError("pool must not be empty, got 0 samples")
    names = _names(pool, ids, n)
    lab = None if labels is None else np.asarray(labels)
    if lab is not None and (lab.ndim != 1 or len(lab) != n):
        raise ValueError(f"labels must have one entry per pool sample ({n}), got {lab.shape}")
    first, shape = _first_usable(pool, names, image_key)
    numel = int(np.prod(shape)) if shape else 1
    size = 1 if opts["roi_size"] is not None else batch_size or default_batch_size(numel)
    kwargs = dict(opts, model=model, device=dev, image_key=image_key, cache=None)
    kwargs.update(progress=False, errors="raise")
    return _Job(pool, names, image_key, shape, first, size, record, lab, kwargs)


def _work(
    job: _Job,
    group: _Group,
    own: ScoreCache | None,
    done: set[str],
    token: str,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[Failure], tuple[float, int, int], Exception | None]:
    """Claim and score units until none is left (or a rank failed); cache each one."""
    n = len(job.names)
    units = [range(j, min(j + job.size, n)) for j in range(0, n, job.size)]
    todo = [[p for p in u if job.names[p] not in done] for u in units]
    todo = [u for u in todo if u]
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    busy, claimed, err = 0.0, 0, None
    bar = _bar(n, len(done), progress and group.rank == 0)
    try:
        j = _claim(group, token, -1)
        while j < len(todo) and group.add(f"rprselect/{token}/abort", 0) == 0:
            t = time.perf_counter()
            new, bad = _score_unit(job, todo[j])
            if own is not None and new:
                own.append(new)
            busy += time.perf_counter() - t
            rows.extend(new)
            failures.extend(bad)
            claimed += 1
            bar.n = group.add(f"rprselect/{token}/done", len(todo[j])) + len(done)
            bar.refresh()
            j = _claim(group, token, j)
    except Exception as e:  # handed to every rank by the caller
        err = e
        group.add(f"rprselect/{token}/abort", 1)
    finally:
        bar.close()
    return rows, failures, (busy, claimed, len(rows)), err


def _claim(group: _Group, token: str, last: int) -> int:
    """The next unit (position in the to-do list) for this rank."""
    if group.store is None:  # static round robin
        return group.rank if last < 0 else last + group.world
    return group.add(f"rprselect/{token}/next", 1) - 1


def _names(pool: Any, ids: Sequence[str] | None, n: int) -> list[str]:
    if ids is None:
        return list(pool.ids) if isinstance(pool, FilePool) else [str(i) for i in range(n)]
    names = [str(i) for i in ids]
    if len(names) != n:
        raise ValueError(f"ids must have one entry per sample ({n}), got {len(names)}")
    if len(set(names)) != n:
        raise ValueError("ids must be unique")
    return names


def _first_usable(pool: Any, names: list[str], key: str) -> tuple[int, tuple[int, ...] | None]:
    for p in range(len(names)):
        it = _load(pool, [p], names, key)[0]
        if it.error is None and it.x is not None and check_item(it, None) is None:
            return p, tuple(it.x.shape)
    return len(names), None


def _open_caches(
    cache: str | None, fp: dict[str, Any], group: _Group
) -> tuple[ScoreCache | None, dict[str, dict[str, Any]]]:
    """This rank's cache, and the rows of the caches it owns: its own, and on rank 0 those
    of ranks beyond the world size (left by a larger earlier job)."""
    if cache is None:
        return None, {}
    own = ScoreCache(rank_cache_path(cache, group.rank), fp)
    rows = dict(own.rows)
    if group.rank == 0:
        for r, path in sorted(_cache_files(cache).items()):
            if r >= group.world:
                rows.update({i: v for i, v in ScoreCache(path, fp).rows.items() if i not in rows})
    return own, rows


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _fingerprint(model: nn.Module, lab: np.ndarray | None, opts: dict[str, Any]) -> dict[str, Any]:
    """What the cached scores depend on: the weights, the labels and the scoring options."""
    settings = {**opts, "config": dataclasses.asdict(opts["config"])}
    return {
        "weights": weights_hash(model),
        "labels": None if lab is None else _digest(lab.tolist()),
        "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
    }


_KINDS = (ValueError, TypeError, ImportError, OSError, KeyError)


def _describe(err: BaseException) -> tuple[str, str]:
    kind = next((c.__name__ for c in _KINDS if isinstance(err, c)), "RuntimeError")
    return kind, f"{type(err).__name__}: {err}"


def _raise_first(group: _Group, mine: BaseException | None, errs: list[Any]) -> None:
    """Raise this rank's own error, else the first other rank's (same builtin kind)."""
    if mine is not None:
        raise mine
    for r, e in enumerate(errs):
        if e is not None:
            kind = next((c for c in _KINDS if c.__name__ == e[0]), RuntimeError)
            raise kind(f"rank {r} of {group.world} failed: {e[1]}")


def _bar(total: int, initial: int, enabled: bool) -> Any:
    class _Silent:
        n = 0

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            pass

    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar then
        return _Silent()
    return tqdm(total=total, initial=initial, unit="sample", desc="scoring", dynamic_ncols=True)


def _merge(
    results: list[Any], k: int, size: int, group: _Group, wall: float, show: bool
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
        batch_size=size,
        ranks=stats,
        wall_seconds=wall,
    )
    if group.rank == 0:
        _report(table, show)
    return table


def _report(table: DistributedScoreTable, show: bool) -> None:
    logger.info(table.summary())
    if show:
        print(f"rprselect: {table.summary()}", file=sys.stderr)
    bad = [table.ids[i] for i in np.flatnonzero(~table.converged)]
    if bad:
        shown = ", ".join(bad[:20]) + (", ..." if len(bad) > 20 else "")
        warnings.warn(
            f"{len(bad)} of {len(table)} samples have singular triplets that missed tol "
            f"(converged=False in the table): {shown}",
            NotConvergedWarning,
            stacklevel=4,
        )
    if table.failures:
        shown = "; ".join(f"{f.id}: {f.reason}" for f in table.failures[:10])
        warnings.warn(
            f"{len(table.failures)} sample(s) could not be scored (see ScoreTable.failures): "
            f"{shown}",
            UserWarning,
            stacklevel=4,
        )
