"""Unlabeled pools, and one way to walk any pool sample by sample.

:func:`iter_pool` walks a tensor, an array, a ``Dataset``, a ``DataLoader`` or a
:class:`FilePool` (image files on disk, from :func:`load_pool`; see :mod:`rprselect.pool_files`
for the file layouts and stacked arrays) and yields one :class:`PoolItem` per sample, so that
:func:`~rprselect.scoring.score` treats them all alike. Given the model, it refuses a pool
whose samples have another rank than the model's first convolution takes (e.g. one sample
without its batch dimension), with a message saying how the pool was read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler

from .pool_files import SUFFIXES, FilePool, PoolItemError, load_pool
from .sample_spec import SampleSpec, sample_spec

__all__ = [
    "FilePool",
    "PoolItem",
    "PoolItemError",
    "load_pool",
    "iter_pool",
    "pool_size",
    "SUFFIXES",
]


@dataclass
class PoolItem:
    """One sample on its way to scoring: its position, id and data, or why it has none."""

    index: int
    id: str
    x: Tensor | None
    error: PoolItemError | None = None


# -- walking any pool --------------------------------------------------------------------------
def pool_size(pool: Any) -> int | None:
    """Number of samples, or ``None`` when unknown up front (a DataLoader without a length)."""
    if isinstance(pool, DataLoader):
        try:
            n = len(pool.dataset)  # type: ignore[arg-type]
        except TypeError:
            return None
        return n
    try:
        return len(pool)
    except TypeError:
        return None


def _as_tensor(item: Any, image_key: str, where: str) -> Tensor:
    if isinstance(item, dict):
        if image_key not in item:
            raise ValueError(
                f"{where} is a dict without the image_key {image_key!r}, got keys "
                f"{sorted(map(str, item))[:8]}"
            )
        item = item[image_key]
    elif isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"{where} is an empty {type(item).__name__}")
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(np.ascontiguousarray(item))
    if not isinstance(item, Tensor):
        raise TypeError(
            f"{where} must be a tensor, an array, a (tensor, label) tuple or a dict "
            f"with key {image_key!r}, got {type(item).__name__}"
        )
    if not item.is_floating_point():
        item = item.float()
    return item


def iter_pool(
    pool: Any,
    ids: Sequence[str] | None = None,
    image_key: str = "image",
    skip: Callable[[str], bool] | None = None,
    *,
    model: nn.Module | None = None,
) -> Iterator[PoolItem]:
    """Yield every sample of a pool as a :class:`PoolItem`, in pool order.

    Args:
        pool: a tensor or array ``(N, C, *spatial)``, a ``Dataset`` whose items are tensors,
            ``(tensor, label)`` tuples or dicts with ``image_key``, or a ``DataLoader`` over such
            a dataset (its batches are split into samples).
        ids: one id per sample; default the ids of a :class:`FilePool`, else the positions.
        image_key: the key of the image in dict items.
        skip: ``skip(id)`` true means the sample is not loaded (``x`` is ``None``), e.g. because
            a cache already holds it. DataLoader batches are loaded regardless.
        model: the network; when its first convolution tells how many dimensions a sample has
            (:func:`~rprselect.sample_spec.sample_spec`), a tensor pool of another rank is
            refused (e.g. one sample without its batch dimension) and an item of another rank
            gets an ``error``.

    Yields:
        Items whose ``error`` is set when a :class:`FilePool` file could not be read, or an
        item does not have the model's sample rank.

    Raises:
        ValueError: a DataLoader that shuffles, samples or drops samples (the ids would not
            match the samples), or a tensor pool of the wrong rank for ``model``.
        TypeError: a pool of another type.
    """
    n = pool_size(pool)
    spec = sample_spec(model) if model is not None else None
    if ids is None and isinstance(pool, FilePool):
        ids = pool.ids
    if ids is not None:
        ids = [str(i) for i in ids]
        if n is not None and len(ids) != n:
            raise ValueError(f"ids must have one entry per sample ({n}), got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique")

    def name(i: int) -> str:
        if ids is None:
            return str(i)
        if i >= len(ids):
            raise ValueError(f"ids has {len(ids)} entries but the pool has more samples")
        return ids[i]

    if isinstance(pool, DataLoader):
        _check_loader(pool)
        i = 0
        for b, batch in enumerate(pool):
            X = _as_tensor(batch, image_key, f"batch {b} of the DataLoader")
            for x in X:
                sid = name(i)
                yield _with_rank_check(PoolItem(i, sid, None if skip and skip(sid) else x), spec)
                i += 1
        return
    if isinstance(pool, np.ndarray):
        pool = torch.from_numpy(np.ascontiguousarray(pool))
    if isinstance(pool, Tensor) and spec is not None:
        _check_tensor_pool(tuple(pool.shape), spec)
    if not isinstance(pool, (Tensor, Dataset)):
        raise TypeError(
            f"pool must be a tensor, an ndarray, a torch Dataset or a DataLoader, "
            f"got {type(pool).__name__}"
        )
    if n is None:
        raise TypeError(
            "pool must have a length (a map-style Dataset); wrap an iterable "
            "dataset in a DataLoader"
        )
    for i in range(n):
        sid = name(i)
        if skip and skip(sid):
            yield PoolItem(i, sid, None)
            continue
        try:
            item = pool[i]
        except PoolItemError as err:
            yield PoolItem(i, sid, None, err)
            continue
        yield _with_rank_check(
            PoolItem(i, sid, _as_tensor(item, image_key, f"pool item {i}")), spec
        )


def _check_loader(loader: DataLoader) -> None:
    """Refuse a DataLoader whose samples do not come in dataset order, or not all of them:
    samples are numbered in iteration order, so their ids would be wrong."""
    if isinstance(loader.dataset, IterableDataset):
        return  # its own order is the pool order
    how = "a DataLoader must yield the dataset in order, all of it, for the ids to match"
    fix = "pass DataLoader(dataset, shuffle=False), or the Dataset itself"
    if not isinstance(loader.sampler, SequentialSampler):
        name = type(loader.sampler).__name__
        why = " (shuffle=True)" if name == "RandomSampler" else ""
        raise ValueError(
            f"pool is a DataLoader with a {name}{why}: samples would be numbered in a "
            f"shuffled order and every score would get another sample's id; {how}: {fix}"
        )
    bs = loader.batch_sampler
    if bs is not None and not (
        isinstance(bs, BatchSampler) and isinstance(bs.sampler, SequentialSampler)
    ):
        raise ValueError(
            f"pool is a DataLoader with the batch_sampler {type(bs).__name__}, which may reorder "
            f"samples; {how}: {fix}"
        )
    if loader.drop_last:
        raise ValueError(
            f"pool is a DataLoader with drop_last=True: the last incomplete batch would be "
            f"lost without a trace; {how}: pass drop_last=False"
        )


def _check_tensor_pool(shape: tuple[int, ...], spec: SampleSpec) -> None:
    if len(shape) == spec.ndim + 1:
        return
    n = shape[0] if shape else 0
    tried = (
        f"pool of shape {shape} was read as {n} sample{'s' if n != 1 else ''} of shape "
        f"{shape[1:]} ({len(shape) - 1} dims), but {spec.describe()}, so a pool must be "
        f"{spec.batch()} ({spec.ndim + 1} dims)"
    )
    if len(shape) != spec.ndim:
        raise ValueError(tried)
    one = "one sample without its batch dimension: pass x[None] (x.unsqueeze(0))"
    many = f"{n} samples without their channel axis: pass x[:, None] (x.unsqueeze(1))"
    if spec.channels is not None and n == spec.channels:
        raise ValueError(f"{tried}; it looks like {one}")
    if spec.channels == 1:
        raise ValueError(f"{tried}; it looks like {many}")
    raise ValueError(f"{tried}; if it is {one}; if it is {many}")


def _with_rank_check(item: PoolItem, spec: SampleSpec | None) -> PoolItem:
    x = item.x
    if spec is None or x is None or x.dim() == spec.ndim:
        return item
    reason = f"has shape {tuple(x.shape)} ({x.dim()} dims), but {spec.describe()}"
    return PoolItem(item.index, item.id, None, PoolItemError(item.id, item.index, reason))


def check_item(item: PoolItem, shape: tuple[int, ...] | None) -> PoolItemError | None:
    """Why a loaded sample cannot be scored (wrong shape, NaN/Inf, all zeros), or ``None``."""
    x = item.x
    if x is None:  # not loaded: nothing to check
        return None
    if shape is not None and tuple(x.shape) != shape:
        return PoolItemError(
            item.id,
            item.index,
            f"has shape {tuple(x.shape)}, expected {shape} like the first sample of the pool",
        )
    if x.dim() < 2:
        return PoolItemError(
            item.id, item.index, f"must have shape (C, *spatial), got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        return PoolItemError(
            item.id, item.index, f"holds NaN or Inf ({bad} of {math.prod(x.shape)} values)"
        )
    if not bool((x != 0).any()):
        return PoolItemError(item.id, item.index, "is all zeros (RPR is undefined)")
    return None
