"""MNIST and scikit-learn digits as tensors, and the paper's class-imbalanced subset.

The MNIST reader parses the original idx ``.gz`` files itself (no torchvision). Missing files are
downloaded from public mirrors when allowed, checked against the md5 sums that torchvision
publishes and the sha256 sums of ``shared/data/SHA256SUMS``, and written atomically. Without
network access the error says which files to put in which folder.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "ImageLabels",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "default_mnist_dir",
    "imbalance_indices",
    "load_digits_tensors",
    "load_mnist",
    "verify_mnist",
]

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class _FileSpec(NamedTuple):
    md5: str
    sha256: str


#: File name -> (md5 from torchvision, sha256 from shared/data/SHA256SUMS).
MNIST_FILES: dict[str, _FileSpec] = {
    "train-images-idx3-ubyte.gz": _FileSpec(
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": _FileSpec(
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": _FileSpec(
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": _FileSpec(
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

_SPLITS: dict[str, tuple[str, str, int]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_DOWNLOAD_TIMEOUT_S = 30.0


class ImageLabels(NamedTuple):
    """Images ``(N, 1, H, W)`` float32 in ``[0, 1]`` and their int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor


def default_mnist_dir() -> Path:
    """Folder where MNIST is looked for when no ``data_dir`` is given.

    Returns:
        ``<repo>/../shared/data/mnist`` if that folder exists (a development checkout next to the
        shared data), else ``$RPRSELECT_DATA/mnist`` if the variable is set, else
        ``~/.cache/rprselect/mnist``.
    """
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
    if shared.is_dir():
        return shared
    env = os.environ.get("RPRSELECT_DATA")
    if env:
        return Path(env).expanduser() / "mnist"
    return Path.home() / ".cache" / "rprselect" / "mnist"


def _digests(path: Path) -> _FileSpec:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
    return _FileSpec(md5.hexdigest(), sha256.hexdigest())


def verify_mnist(data_dir: str | Path | None = None) -> None:
    """Check the md5 and sha256 sums of the four MNIST files.

    Args:
        data_dir: folder holding the files; ``default_mnist_dir()`` if ``None``.

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if a checksum differs, naming the file, the expected and the received sum.
    """
    folder = Path(data_dir) if data_dir is not None else default_mnist_dir()
    for name, spec in MNIST_FILES.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"MNIST file {path} does not exist")
        got = _digests(path)
        for kind in ("md5", "sha256"):
            if getattr(got, kind) != getattr(spec, kind):
                raise ValueError(
                    f"{kind} of MNIST file {path} must be {getattr(spec, kind)}, "
                    f"got {getattr(got, kind)}"
                )


def _download(name: str, folder: Path) -> None:
    """Fetch ``name`` from the first mirror that serves it with the right checksums."""
    spec = MNIST_FILES[name]
    folder.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name
        tmp = folder / f".{name}.{os.getpid()}.part"
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                with open(tmp, "wb") as f:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        f.write(chunk)
            got = _digests(tmp)
            if got != spec:
                errors.append(f"{url}: checksum mismatch (md5 {got.md5}, expected {spec.md5})")
                continue
            os.replace(tmp, folder / name)
            return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(errors))


def _missing_message(folder: Path, missing: Sequence[str], reason: str) -> str:
    listing = "\n".join(f"  {folder / name}" for name in missing)
    mirrors = ", ".join(MNIST_MIRRORS)
    return (
        f"MNIST files are missing ({reason}). Place these files (gzip-compressed idx, as served "
        f"by {mirrors}) in {folder}:\n{listing}\n"
        "or pass data_dir=<folder holding them>."
    )


def _ensure_files(folder: Path, names: Sequence[str], download: bool) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if not missing:
        return
    if not download:
        raise FileNotFoundError(_missing_message(folder, missing, "download=False"))
    failures: list[str] = []
    for name in missing:
        try:
            _download(name, folder)
        except OSError as exc:
            failures.append(f"{name}: {exc}")
    still_missing = [name for name in missing if not (folder / name).is_file()]
    if still_missing:
        reason = "download failed: " + " | ".join(failures)
        raise FileNotFoundError(_missing_message(folder, still_missing, reason))


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"MNIST file {path} is corrupt or truncated: {exc}") from exc


def _parse_idx(path: Path, magic: int, n: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse an idx file of unsigned bytes and check its magic number and sizes."""
    data = _read_gz(path)
    header_len = 4 * (2 + len(item_shape))
    if len(data) < header_len:
        raise ValueError(
            f"MNIST file {path} is truncated: header needs {header_len} bytes, got {len(data)}"
        )
    got_magic, *dims = struct.unpack(f">{1 + 1 + len(item_shape)}I", data[:header_len])
    if got_magic != magic:
        raise ValueError(
            f"MNIST file {path} must have magic number {magic:#010x}, got {got_magic:#010x}"
        )
    expected_dims = [n, *item_shape]
    if dims != expected_dims:
        raise ValueError(f"MNIST file {path} must have dimensions {expected_dims}, got {dims}")
    size = math.prod(expected_dims)
    if len(data) - header_len != size:
        raise ValueError(
            f"MNIST file {path} must hold {size} data bytes after its header, "
            f"got {len(data) - header_len}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(expected_dims)


def load_mnist(
    data_dir: str | Path | None = None, split: str = "train", download: bool = True
) -> ImageLabels:
    """Load an MNIST split from the original idx ``.gz`` files.

    Args:
        data_dir: folder holding the four files; ``default_mnist_dir()`` if ``None``.
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        download: fetch missing files from ``MNIST_MIRRORS`` (checked by md5 and sha256).

    Returns:
        ``ImageLabels``: images float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` and int64 labels
        ``(N,)``; it unpacks as a tuple ``images, labels``.

    Raises:
        ValueError: if ``split`` is unknown, or a file is corrupt, truncated or has the wrong
            magic number or sizes (the message names the file).
        FileNotFoundError: if files are missing and cannot be downloaded; the message lists the
            files and the folder to put them in.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    folder = Path(data_dir) if data_dir is not None else default_mnist_dir()
    images_name, labels_name, n = _SPLITS[split]
    _ensure_files(folder, (images_name, labels_name), download)
    images = _parse_idx(folder / images_name, _IMAGES_MAGIC, n, (28, 28))
    labels = _parse_idx(folder / labels_name, _LABELS_MAGIC, n, ())
    if labels.max() > 9:
        raise ValueError(
            f"MNIST file {folder / labels_name} must hold labels 0..9, got {labels.max()}"
        )
    x = torch.from_numpy(images.astype(np.float32)[:, None] / np.float32(255.0))
    y = torch.from_numpy(labels.astype(np.int64))
    return ImageLabels(x, y)


def load_digits_tensors() -> ImageLabels:
    """Load scikit-learn's 8x8 digits (1797 images) as tensors, a fast stand-in for MNIST.

    Returns:
        ``ImageLabels``: images float32 ``(1797, 1, 8, 8)`` in ``[0, 1]`` (pixel values 0..16
        divided by 16) and int64 labels.

    Raises:
        ImportError: if scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "load_digits_tensors needs scikit-learn: pip install rprselect[extras]"
        ) from exc
    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32)[:, None] / np.float32(16.0)
    labels = np.asarray(digits.target, dtype=np.int64)
    return ImageLabels(torch.from_numpy(images), torch.from_numpy(labels))


def imbalance_indices(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    rare: Sequence[int] = (1, 9),
    keep_fraction: float = 0.01,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a class-imbalanced subset (paper Section 1.3 removes 99% of digits 1 and 9).

    Every sample of a class not in ``rare`` is kept. Of each rare class present in ``labels``,
    ``max(1, round(keep_fraction * count))`` samples are kept, drawn without replacement with a
    fixed seed. A rare class absent from ``labels`` contributes nothing.

    Args:
        labels: 1-D integer class labels.
        rare: the classes to thin out.
        keep_fraction: fraction of each rare class to keep, in ``(0, 1]``.
        seed: seed of the draw; the same inputs always give the same indices.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ValueError: if ``labels`` is not 1-D or ``keep_fraction`` is outside ``(0, 1]``.
    """
    y = (
        torch.as_tensor(np.asarray(labels)).long()
        if not isinstance(labels, torch.Tensor)
        else labels
    )
    if y.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(y.shape)}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must satisfy 0 < keep_fraction <= 1, got {keep_fraction}")
    y = y.detach().cpu().long()
    rare_t = torch.as_tensor(list(rare), dtype=torch.long)
    keep = [torch.nonzero(~torch.isin(y, rare_t)).flatten()]
    generator = torch.Generator().manual_seed(seed)
    for digit in dict.fromkeys(int(d) for d in rare):  # unique, in the given order
        members = torch.nonzero(y == digit).flatten()
        if members.numel() == 0:
            continue
        n_keep = max(1, round(keep_fraction * members.numel()))
        keep.append(members[torch.randperm(members.numel(), generator=generator)[:n_keep]])
    return torch.sort(torch.cat(keep)).values
