"""Pools of image files: :func:`load_pool` and :class:`FilePool` (re-exported by
:mod:`rprselect.pool`).

:func:`load_pool` turns a folder or a glob of ``.npy``/``.npz``, PNG and NIfTI files into a
:class:`FilePool`, a torch ``Dataset`` whose ids are the file names.

Layouts (every sample comes out channel-first, float32):

- ``.npy``: the array as stored, read as ``(C, *spatial)``; an array with one dimension less
  than a sample (a 2-D array when the model is unknown) gains a channel axis.
- ``.npz``: the array under the key ``"image"``, else ``"x"``, else the first array; as ``.npy``.
- ``.png``: grayscale ``(1, H, W)``, colour ``(3, H, W)`` (alpha dropped), values in ``[0, 1]``.
- ``.nii``/``.nii.gz``: a 3-D volume becomes ``(1, X, Y, Z)``; a 4-D one with its channels last
  becomes ``(C, X, Y, Z)``. Needs nibabel (``pip install 'rprselect[monai]'``).

Stacked arrays: a ``.npy``/``.npz`` file may hold N samples ``(N, C, *spatial)`` (``np.save`` of
a batch, MedMNIST's ``.npz``). With ``stacked=True`` every array file is read that way; with
``model=`` given, a file whose array has one dimension more than the model's sample (or, for a
one-channel model, ``(N, *spatial)``) is. The samples of ``pool.npy`` get the ids
``pool.npy:0``, ``pool.npy:1``, ... A file that fits neither reading is a failed sample whose
reason says which readings were tried.
"""

from __future__ import annotations

import glob
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .sample_spec import SampleSpec, sample_spec

__all__ = ["FilePool", "PoolItemError", "load_pool", "SUFFIXES"]

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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _channel_first(a: np.ndarray, what: str, ndim: int | None = None) -> np.ndarray:
    """``a`` as one sample ``(C, *spatial)``: it gains a channel axis when it has one dimension
    less than the model's sample (``ndim``), or is 2-D when that is unknown."""
    if ndim is not None:
        return a[None] if a.ndim == ndim - 1 else a
    if a.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dimensions, got shape {a.shape}")
    return a[None] if a.ndim == 2 else a


def _npz_key(keys: Sequence[str]) -> str:
    if not keys:
        raise ValueError("the .npz archive holds no array")
    return next((k for k in ("image", "x") if k in keys), keys[0])


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z[_npz_key(list(z.keys()))]


def _array_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the array a ``.npy``/``.npz`` file holds, from its header only; ``None``
    when the header cannot be read (the file then fails when it is read)."""
    try:
        if _suffix(path) == ".npy":
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            with zf.open(_npz_key(names) + ".npy") as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape = np.lib.format.read_array_header_1_0(fh)[0]
                else:
                    shape = np.lib.format.read_array_header_2_0(fh)[0]
                return tuple(shape)
    except Exception:  # any unreadable header: the file is reported when it is read
        return None


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
_ARRAYS = (".npy", ".npz")


def _stack_size(shape: tuple[int, ...], stacked: bool | None, spec: SampleSpec | None) -> int:
    """How many samples an array of ``shape`` holds: 0 means "read it as one sample"."""
    if not shape or (stacked is False) or (stacked is None and spec is None):
        return 0
    if stacked is None:
        assert spec is not None
        one_channel_stack = len(shape) == spec.ndim and spec.channels == 1 and shape[0] != 1
        if len(shape) != spec.ndim + 1 and not one_channel_stack:
            return 0
    return shape[0] if shape[0] > 0 else 0


class FilePool(Dataset):
    """A pool of image files; ``pool[i]`` is the float32 ``(C, *spatial)`` tensor of sample i.

    Args:
        paths: the files, in pool order. Their names (relative to ``root`` when given) are
            the sample ids and must be unique.
        root: the folder the ids are relative to.
        stacked: read every ``.npy``/``.npz`` file as a stack of samples ``(N, C, *spatial)``
            (``True``), each as one sample (``False``), or decide per file from ``model``
            (``None``, the default: one sample per file when ``model`` is not given).
        model: the network the pool is for; its first convolution
            (:func:`~rprselect.sample_spec.sample_spec`) tells how many dimensions a sample
            has, which decides the reading of an array file and which sample is refused.

    The samples of a stacked file ``pool.npy`` have the ids ``pool.npy:0``, ``pool.npy:1``, ...
    Array headers are read when the pool is built (to count samples); data only when indexed.

    Raises:
        ValueError: no paths, an unsupported ending, or two files with the same id.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        root: str | Path | None = None,
        *,
        stacked: bool | None = None,
        model: nn.Module | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("pool must not be empty: paths is an empty list")
        bad = [str(p) for p in self.paths if _suffix(p) not in _READERS]
        if bad:
            raise ValueError(f"pool files must end in one of {SUFFIXES}, got {bad[:3]}")
        if stacked not in (None, True, False):
            raise ValueError(f"stacked must be True, False or None, got {stacked!r}")
        base = Path(root) if root is not None else None
        names = [str(p.relative_to(base)) if base else p.name for p in self.paths]
        if len(set(names)) != len(names):
            dup = sorted({i for i in names if names.count(i) > 1})
            raise ValueError(
                f"pool file names must be unique to serve as ids, got repeats {dup[:3]}"
            )
        self.stacked = stacked
        self.spec = sample_spec(model) if model is not None else None
        self.ids: list[str] = []
        self._where: list[tuple[int, int | None]] = []  # (file, position in its stack)
        self._shapes: dict[int, tuple[int, ...] | None] = {}
        for f, (path, name) in enumerate(zip(self.paths, names, strict=True)):
            count = 0
            if _suffix(path) in _ARRAYS and (stacked or self.spec is not None):
                self._shapes[f] = _array_shape(path)
                count = _stack_size(self._shapes[f] or (), stacked, self.spec)
            if count:
                self.ids += [f"{name}:{j}" for j in range(count)]
                self._where += [(f, j) for j in range(count)]
            else:
                self.ids.append(name)
                self._where.append((f, None))
        self._last: tuple[int, np.ndarray] | None = None  # the stacked array read last

    def __len__(self) -> int:
        return len(self.ids)

    def source(self, index: int) -> tuple[Path, int | None]:
        """The file of sample ``index`` and its position in that file's stack (``None``: the
        whole file is the sample)."""
        f, j = self._where[index]
        return self.paths[f], j

    def reading(self, index: int) -> str:
        """How sample ``index`` was read from its file, for messages."""
        f, j = self._where[index]
        if j is not None:
            shape = self._shapes.get(f)
            return f"read as sample {j} of a stack of {shape[0] if shape else '?'} (axis 0)"
        return "read as one sample"

    def _array(self, f: int) -> np.ndarray:
        if self._last is None or self._last[0] != f:
            self._last = (f, _READERS[_suffix(self.paths[f])](self.paths[f]))
        return self._last[1]

    def __getitem__(self, index: int) -> Tensor:
        """The sample ``index``.

        Raises:
            PoolItemError: the file is missing, truncated or corrupt, holds no real numbers,
                or (with a model) its array fits the model's sample in no reading.
            ImportError: the reader of this file type is not installed.
        """
        f, j = self._where[index]
        path = self.paths[f]
        ndim = self.spec.ndim if self.spec is not None else None
        try:
            if j is None:
                a = _READERS[_suffix(path)](path)
                if _suffix(path) in _ARRAYS:
                    a = _channel_first(a, f"the array of {path.name}", ndim)
            else:
                a = _channel_first(self._array(f)[j], f"sample {j} of {path.name}", ndim)
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
        if self.spec is not None and a.ndim != self.spec.ndim:
            raise PoolItemError(self.ids[index], index, self._misfit(index, a.shape))
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def _misfit(self, index: int, shape: tuple[int, ...]) -> str:
        assert self.spec is not None
        f, j = self._where[index]
        path = self.paths[f]
        if j is not None or _suffix(path) not in _ARRAYS:
            return f"{path} {self.reading(index)} has shape {shape}; {self.spec.describe()}"
        tried = f"an array of shape {shape}: read as one sample it has {len(shape)} dims"
        if self.stacked is not False and len(shape) > 1:
            tried += f", read as a stack of samples {shape[1:]} it has {len(shape) - 1}"
        hint = " (stacked=False was given)" if self.stacked is False else ""
        return f"{path} holds {tried}; {self.spec.describe()}{hint}"

    def __repr__(self) -> str:
        return f"FilePool({len(self)} samples from {len(self.paths)} files, first {self.ids[0]!r})"


def load_pool(
    path_or_glob: str | Path | Sequence[str | Path],
    *,
    stacked: bool | None = None,
    model: nn.Module | None = None,
) -> FilePool:
    """Collect the image files of a folder, a glob pattern or a list of paths.

    A folder is searched recursively for the endings in :data:`SUFFIXES`; ids are then the
    paths relative to it. Files are sorted by name, so the pool order is reproducible.

    Args:
        path_or_glob: a folder, a single file, a glob such as ``"scans/*.nii.gz"``, or a list
            of files.
        stacked: how to read ``.npy``/``.npz`` files, see :class:`FilePool`.
        model: the network, to read array files by its sample shape, see :class:`FilePool`.

    Returns:
        A :class:`FilePool`; files are read only when indexed.

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: a matched file has an unsupported ending.
    """
    kw: dict[str, Any] = {"stacked": stacked, "model": model}
    if not isinstance(path_or_glob, (str, Path)):
        return FilePool(list(path_or_glob), **kw)
    p = Path(path_or_glob)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f) in _READERS)
        if not files:
            raise FileNotFoundError(f"pool folder {p} holds no file ending in {SUFFIXES}")
        return FilePool(files, root=p, **kw)
    if p.is_file():
        return FilePool([p], **kw)
    matches = sorted(Path(m) for m in glob.glob(os.fspath(p), recursive=True))
    files = [m for m in matches if m.is_file()]
    if not files:
        raise FileNotFoundError(
            f"pool path {str(p)!r} is neither a folder, a file nor a glob that matches any file"
        )
    return FilePool(files, **kw)
