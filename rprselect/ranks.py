"""The process group of a torchrun launch, as the distributed driver uses it.

Joining (or starting, from the torchrun environment) the group, this process's rank and the
world size, an all-gather of Python objects, an atomic counter in the group's store (how ranks
claim work units), and raising one rank's error on every rank.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_distributed_launch", "is_main_rank", "Group", "join", "describe", "raise_first"]


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


class Group:
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


def join(device: str | torch.device | None) -> tuple[Group, torch.device | None]:
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
    return Group(), dev


def _end_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_KINDS = (ValueError, TypeError, ImportError, OSError, KeyError)


def describe(err: BaseException) -> tuple[str, str]:
    kind = next((c.__name__ for c in _KINDS if isinstance(err, c)), "RuntimeError")
    return kind, f"{type(err).__name__}: {err}"


def raise_first(group: Group, mine: BaseException | None, errs: list[Any]) -> None:
    """Raise this rank's own error, else the first other rank's (same builtin kind)."""
    if mine is not None:
        raise mine
    for r, e in enumerate(errs):
        if e is not None:
            kind = next((c for c in _KINDS if c.__name__ == e[0]), RuntimeError)
            raise kind(f"rank {r} of {group.world} failed: {e[1]}")
