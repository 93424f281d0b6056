"""A resumable, append-only cache of per-sample scores (JSON Lines).

The first line is a header holding a *fingerprint* of everything the scores depend on
(:meth:`~rprselect.ScoreSettings.fingerprint`: a hash of the model's weights, the labels and
the scoring settings). Each further line is one finished sample, keyed by its id *and* a hash
of its content (:func:`~rprselect.settings.content_hash`): a row is reused only for a sample
whose id and content both match, and a sample whose content changed is scored again, its new
row appended after the stale one (the last row of an id wins).

A pool scored by several processes keeps one file per rank (:func:`rank_cache_path`); every
driver reads the base file and all its rank files (:func:`read_all`), so a cache written by a
single process resumes under torchrun and the other way round.

A batch of rows is written with a single ``write`` followed by ``fsync``, so a run killed at
any moment leaves every earlier batch intact; a half-written last line (killed mid-write) is
dropped when the cache is reopened. Reopening with a different fingerprint raises
``ValueError`` instead of reusing stale scores: delete the file or choose another path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ScoreCache", "weights_hash", "FORMAT", "rank_cache_path", "read_all"]

#: written in the header; bump when the row layout changes
FORMAT = "rprselect-score-cache/2"


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of a model's ``state_dict``: every entry's name, dtype, shape and bytes.

    Two models with equal weights (and buffers) hash alike on any device.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:  # extra state objects: hash their repr
            h.update(repr(t).encode())
    return h.hexdigest()


class ScoreCache:
    """Rows of finished samples keyed by id, backed by a JSON Lines file.

    Args:
        path: the cache file; created (with its header) when missing.
        fingerprint: JSON-serialisable description of the model and settings. It must equal
            the one stored in an existing file.

    Attributes:
        rows: id -> row for every sample already in the file.

    Raises:
        ValueError: the file belongs to other settings or another model (the message names
            the fields that differ), or it is not a score cache.
    """

    def __init__(self, path: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # normalise tuples etc.
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            self._create()

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add finished samples, durably: one write, then flush and fsync.

        A row for an id already cached replaces it only with another ``content`` (the sample
        changed); the same id and content twice is a bug in the caller.

        Raises:
            ValueError: a row without an ``"id"``, or an id already cached with that content.
        """
        batch = [dict(r) for r in rows]
        for r in batch:
            if "id" not in r:
                raise ValueError("every cache row must have an 'id'")
            old = self.rows.get(str(r["id"]))
            if old is not None and old.get("content") == r.get("content"):
                raise ValueError(f"sample {r['id']!r} is already in the cache {self.path}")
        if not batch:
            return
        data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in batch).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        for r in batch:
            self.rows[str(r["id"])] = r

    # -- internals ---------------------------------------------------------------------------
    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "fingerprint": self.fingerprint}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(header) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def _load(self) -> None:
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) < len(raw):  # killed mid-write: drop the partial last line
            with open(self.path, "r+b") as fh:
                fh.truncate(len(complete))
                fh.flush()
                os.fsync(fh.fileno())
        lines = complete.decode().splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(
                f"cache {self.path} is not an rprselect score cache "
                f"(expected a first line with format {FORMAT!r})"
            )
        self._check(header.get("fingerprint", {}))
        for n, line in enumerate(lines[1:], start=2):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"cache {self.path} is corrupt at line {n}: {err}") from err
            self.rows[str(row["id"])] = row

    def _check(self, stored: Mapping[str, Any]) -> None:
        old, new = _flat(stored), _flat(self.fingerprint)
        keys = sorted(set(old) | set(new))
        diff = [k for k in keys if old.get(k) != new.get(k)]
        if diff:
            shown = "; ".join(
                f"{k}: cached {_short(old.get(k))}, now {_short(new.get(k))}" for k in diff
            )
            raise ValueError(
                f"cache {self.path} was written for another model or other "
                f"settings ({shown}); its scores would be stale: delete it or "
                "pass another cache path"
            )


def _flat(fp: Mapping[str, Any]) -> dict[str, Any]:
    """Nested fields (the ``settings`` of a fingerprint) brought up one level, by name."""
    out: dict[str, Any] = {}
    for k, v in fp.items():
        if isinstance(v, Mapping) and k == "settings":
            out.update(v)
        else:
            out[k] = v
    return out


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s[:12] + "..." if isinstance(v, str) and len(s) > 16 else s


def rank_cache_path(cache: str | os.PathLike[str], rank: int) -> Path:
    """The cache file of ``rank``: ``scores.cache.jsonl`` -> ``scores.cache.rank3.jsonl``."""
    p = Path(cache)
    if p.suffix:
        return p.with_name(f"{p.stem}.rank{rank}{p.suffix}")
    return p.with_name(f"{p.name}.rank{rank}")


def cache_files(cache: str | os.PathLike[str]) -> dict[int, Path]:
    """Every existing rank file of ``cache``, by rank."""
    p = Path(cache)
    head, _, tail = rank_cache_path(p, 0).name.rpartition(".rank0")
    found: dict[int, Path] = {}
    for f in p.parent.glob(f"{head}.rank*{tail}"):
        r = f.name[len(head) + 5 : len(f.name) - len(tail)]
        if r.isdigit():
            found[int(r)] = f
    return found


def read_all(
    cache: str | os.PathLike[str], fingerprint: Mapping[str, Any], skip: Path | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of ``cache`` and of all its rank files (except ``skip``), by (id, content).

    Raises:
        ValueError: any of them was written for another model or other settings.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    paths = [Path(cache), *(f for _, f in sorted(cache_files(cache).items()))]
    for path in paths:
        if path == skip or not path.exists() or path.stat().st_size == 0:
            continue
        for sid, row in ScoreCache(path, fingerprint).rows.items():
            rows.setdefault((sid, str(row.get("content"))), row)
    return rows
