"""Unlabeled pools: image files on disk, and one way to walk any pool sample by sample.

:func:`load_pool` turns a folder or a glob of ``.npy``/``.npz``, PNG and NIfTI files into a
:class:`FilePool`, a torch ``Dataset`` whose ids are the file names. :func:`iter_pool` walks a
tensor, an array, a ``Dataset`` or a ``DataLoader`` and yields one :class:`PoolItem` per sample,
so that :func:`~rprselect.scoring.score` treats them all alike.

Layouts (every sample comes out channel-first, float32):

- ``.npy``: the array as stored, read as ``(C, *spatial)``; a 2-D array gains a channel axis.
- ``.npz``: the array under the key ``"image"``, else ``"x"``, else the first array; as ``.npy``.
- ``.png``: grayscale ``(1, H, W)``, colour ``(3, H, W)`` (alpha dropped), values in ``[0, 1]``.
- ``.nii``/``.nii.gz``: a 3-D volume becomes ``(1, X, Y, Z)``; a 4-D one with its channels last
  becomes ``(C, X, Y, Z)``. Needs nibabel (``pip install 'rprselect[monai]'``).
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "FilePool",
    "PoolItem",
    "PoolItemError",
    "load_pool",
    "iter_pool",
    "pool_size",
    "SUFFIXES",
]

#: file endings :func:`load_pool` reads
SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".png", ".nii", ".nii.gz")


class PoolItemError(ValueError):
    """One sample of a pool could not be used (unreadable file, NaN, all zeros, bad shape).

    Attributes:
        item_id: the sample's id (its file name for a :class:`FilePool`).
        index: its position in the pool.
        reason: what went wrong, without the id.
    """

    def __init__(self, item_id: str, index: int, reason: str) -> None:
        self.item_id = item_id
        self.index = index
        self.reason = reason
        super().__init__(f"pool item {item_id!r} (index {index}): {reason}")


@dataclass
class PoolItem:
    """One sample on its way to scoring: its position, id and data, or why it has none."""

    index: int
    id: str
    x: Tensor | None
    error: PoolItemError | None = None


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _channel_first(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dimensions, got shape {a.shape}")
    return a[None] if a.ndim == 2 else a


def _read_npy(path: Path) -> np.ndarray:
    return _channel_first(np.load(path, allow_pickle=False), "a .npy array")


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        if not keys:
            raise ValueError("the .npz archive holds no array")
        key = next((k for k in ("image", "x") if k in keys), keys[0])
        return _channel_first(z[key], f"array {key!r} of the .npz archive")


def _read_png(path: Path) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(path) as img:
            a = np.asarray(img)
        if a.dtype == np.bool_:
            a = a.astype(np.float32)
        elif a.dtype != np.float32:
            scale = 65535.0 if a.dtype == np.uint16 else 255.0
            a = a.astype(np.float32) / np.float32(scale)
    except ImportError:  # no Pillow: matplotlib reads PNG itself
        try:
            import matplotlib.image as mpimg
        except ImportError as err:
            raise ImportError(
                "reading PNG needs Pillow or matplotlib: pip install 'rprselect[extras]'"
            ) from err
        a = np.asarray(mpimg.imread(path), dtype=np.float32)
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] in (3, 4) else a[..., :1]
        a = np.moveaxis(a, -1, 0)
    return _channel_first(a, "a PNG image")


def _read_nifti(path: Path) -> np.ndarray:
    try:
        import nibabel as nib
    except ImportError as err:
        raise ImportError("reading NIfTI needs nibabel: pip install 'rprselect[monai]'") from err
    a = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float32))  # type: ignore[attr-defined]
    if a.ndim == 4:
        return np.moveaxis(a, -1, 0)
    if a.ndim == 3:
        return a[None]
    raise ValueError(f"a NIfTI image must be 3-D or 4-D, got shape {a.shape}")


_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".png": _read_png,
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
}


class FilePool(Dataset):
    """A pool of image files; ``pool[i]`` is the float32 ``(C, *spatial)`` tensor of file i.

    Args:
        paths: the files, in pool order. Their names (relative to ``root`` when given) are
            the sample ids and must be unique.
        root: the folder the ids are relative to.

    Raises:
        ValueError: no paths, an unsupported ending, or two files with the same id.
    """

    def __init__(self, paths: Sequence[str | Path], root: str | Path | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("pool must not be empty: paths is an empty list")
        bad = [str(p) for p in self.paths if _suffix(p) not in _READERS]
        if bad:
            raise ValueError(f"pool files must end in one of {SUFFIXES}, got {bad[:3]}")
        base = Path(root) if root is not None else None
        self.ids = [str(p.relative_to(base)) if base else p.name for p in self.paths]
        if len(set(self.ids)) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise ValueError(
                f"pool file names must be unique to serve as ids, got repeats {dup[:3]}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        """The sample of file ``index``.

        Raises:
            PoolItemError: the file is missing, truncated or corrupt, or holds NaN/Inf.
            ImportError: the reader of this file type is not installed.
        """
        path = self.paths[index]
        try:
            a = _READERS[_suffix(path)](path)
        except ImportError:
            raise
        except Exception as err:  # readers raise many types (OSError, EOFError, zlib.error,
            # nibabel's ImageFileError, ...); all mean "this one file is unusable"
            raise PoolItemError(
                self.ids[index], index, f"cannot read {path}: {type(err).__name__}: {err}"
            ) from err
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise PoolItemError(
                self.ids[index], index, f"{path} holds dtype {a.dtype}, expected real numbers"
            )
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def __repr__(self) -> str:
        return f"FilePool({len(self)} files, first {self.ids[0]!r})"


def load_pool(path_or_glob: str | Path | Sequence[str | Path]) -> FilePool:
    """Collect the image files of a folder, a glob pattern or a list of paths.

    A folder is searched recursively for the endings in :data:`SUFFIXES`; ids are then the
    paths relative to it. Files are sorted by name, so the pool order is reproducible.

    Args:
        path_or_glob: a folder, a single file, a glob such as ``"scans/*.nii.gz"``, or a list
            of files.

    Returns:
        A :class:`FilePool`; files are read only when indexed.

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: a matched file has an unsupported ending.
    """
    if not isinstance(path_or_glob, (str, Path)):
        return FilePool(list(path_or_glob))
    p = Path(path_or_glob)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f) in _READERS)
        if not files:
            raise FileNotFoundError(f"pool folder {p} holds no file ending in {SUFFIXES}")
        return FilePool(files, root=p)
    if p.is_file():
        return FilePool([p])
    matches = sorted(Path(m) for m in glob.glob(os.fspath(p), recursive=True))
    files = [m for m in matches if m.is_file()]
    if not files:
        raise FileNotFoundError(
            f"pool path {str(p)!r} is neither a folder, a file nor a glob that matches any file"
        )
    return FilePool(files)


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

    Yields:
        Items whose ``error`` is set when a :class:`FilePool` file could not be read.
    """
    n = pool_size(pool)
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
        i = 0
        for b, batch in enumerate(pool):
            X = _as_tensor(batch, image_key, f"batch {b} of the DataLoader")
            for x in X:
                sid = name(i)
                yield PoolItem(i, sid, None if skip and skip(sid) else x)
                i += 1
        return
    if isinstance(pool, np.ndarray):
        pool = torch.from_numpy(np.ascontiguousarray(pool))
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
        yield PoolItem(i, sid, _as_tensor(item, image_key, f"pool item {i}"))


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
