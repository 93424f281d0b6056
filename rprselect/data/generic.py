"""Users' own data: classification arrays in the MedMNIST ``.npz`` layout, and PNG segmentation.

:func:`load_npz` reads one ``.npz`` archive with the six arrays of the MedMNIST layout
(``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``,
``test_labels``) and returns :class:`NpzData`: float32 images ``(N, C, H, W)`` in ``[0, 1]`` and
int64 labels, for any number of classes and any class balance.

:func:`load_pngseg` reads a folder with ``image/*.png`` and ``label/*.png`` pairs of the same
name, for binary 2-D segmentation, and returns :class:`SegData`. A label pixel is foreground when
its value, scaled to ``[0, 1]``, exceeds 0.5 (or, with ``invert_label=True``, when it does not).
``downsample=F`` averages the image over ``F x F`` blocks and takes the majority of the label in
each block; ``tile=T`` cuts every (downsampled) image into non-overlapping ``T x T`` patches.

Only numpy and torch are imported here; reading PNG uses the reader of :mod:`rprselect.pool_files`
(Pillow, else matplotlib), imported when a file is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["NPZ_KEYS", "NpzData", "SegData", "load_npz", "load_pngseg"]

#: the arrays an archive in the MedMNIST layout must hold
NPZ_KEYS: tuple[str, ...] = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)
_SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class NpzData:
    """A classification data set split into train, validation and test.

    Attributes:
        train_x, val_x, test_x: float32 images ``(N, C, H, W)`` in ``[0, 1]``.
        train_y, val_y, test_y: int64 labels ``(N,)`` in ``0 .. num_classes - 1``.
        num_classes: one more than the largest label of any split.
    """

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int

    def class_counts(self, split: str = "train") -> list[int]:
        """Samples of each class in ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        y = getattr(self, f"{split}_y")
        return torch.bincount(y, minlength=self.num_classes).tolist()


@dataclass(frozen=True)
class SegData:
    """Binary 2-D segmentation samples (whole images or tiles).

    Attributes:
        images: float32 ``(N, C, H, W)`` in ``[0, 1]``.
        masks: int64 ``(N, H, W)`` in ``{0, 1}``.
        ids: one id per sample: the file name, with ``@row,col`` of the tile's corner when tiled.
        sources: the file name each sample comes from.
    """

    images: Tensor
    masks: Tensor
    ids: list[str]
    sources: list[str]


def _channels_first(a: np.ndarray, key: str) -> np.ndarray:
    """``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    In 4-D the channel axis is the one strictly smaller than both of the others (MedMNIST
    stores ``(N, 28, 28, 3)``; torch convention is ``(N, 3, 28, 28)``).
    """
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        n, d1, d2, d3 = a.shape
        if d3 < d1 and d3 < d2:
            return np.moveaxis(a, 3, 1)
        if d1 < d2 and d1 < d3:
            return a
        raise ValueError(
            f"{key} must be N x H x W, N x H x W x C or N x C x H x W with fewer channels than "
            f"rows and columns; cannot tell the channel axis of shape {a.shape}"
        )
    raise ValueError(
        f"{key} must be N x H x W, N x H x W x C or N x C x H x W (3 or 4 dimensions), "
        f"got shape {a.shape}"
    )


def _scaled(a: np.ndarray, key: str) -> np.ndarray:
    """Images as float32 in ``[0, 1]``: uint8 / 255, uint16 / 65535, bool as 0/1, floats kept."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{key} must be uint8, uint16, bool or float, got dtype {a.dtype}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{key} must be finite, got NaN or Inf values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(
            f"{key} holds floats, which must lie in [0, 1]; got the range "
            f"[{float(a.min()):.4g}, {float(a.max()):.4g}] (store uint8, or rescale to [0, 1])"
        )
    return a.astype(np.float32)


def _labels(a: np.ndarray, key: str, n: int) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(
            f"{key} must be shaped (N,) or (N, 1) with one class per sample (multi-label data "
            f"is not supported), got shape {a.shape}"
        )
    if a.shape[0] != n:
        raise ValueError(f"{key} must hold one label per image ({n}), got {a.shape[0]}")
    if np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and np.array_equal(a, np.round(a))):
            raise ValueError(f"{key} must hold whole class indices, got non-integer values")
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{key} must be an integer class index, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        raise ValueError(f"{key} must be >= 0, got the label {int(a.min())}")
    return a.astype(np.int64)


def load_npz(path: str | Path) -> NpzData:
    """Load a classification data set stored in the MedMNIST ``.npz`` layout.

    Images may be uint8 (divided by 255), uint16 (divided by 65535), bool, or floats already in
    ``[0, 1]``; shaped ``N x H x W`` (one channel), ``N x H x W x C`` or ``N x C x H x W``.
    Labels are ``(N,)`` or ``(N, 1)`` class indices; any number of classes, any balance.

    Args:
        path: the ``.npz`` archive (read with ``allow_pickle=False``).

    Returns:
        :class:`NpzData` with ``num_classes = max(label) + 1`` over all splits.

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: a missing key (the message lists the keys present), a bad shape or dtype,
            splits whose image sizes or channels differ, an empty training split.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path must be an .npz file, got {str(path)!r} (not a file)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"path {str(path)!r} is not a readable .npz archive: {err}") from err
    with archive as z:
        missing = [key for key in NPZ_KEYS if key not in z.files]
        if missing:
            raise ValueError(
                f"{path.name} must hold the MedMNIST keys {list(NPZ_KEYS)}; missing "
                f"{missing}, present {sorted(z.files)}"
            )
        arrays = {key: np.asarray(z[key]) for key in NPZ_KEYS}
    fields: dict[str, Tensor] = {}
    item_shape: tuple[int, ...] | None = None
    for split in _SPLITS:
        key = f"{split}_images"
        x = _scaled(_channels_first(arrays[key], key), key)
        if item_shape is not None and x.shape[1:] != item_shape:
            raise ValueError(
                f"{key} must have the sample shape (C, H, W) = {item_shape} of train_images, "
                f"got {x.shape[1:]}"
            )
        item_shape = x.shape[1:]
        y = _labels(arrays[f"{split}_labels"], f"{split}_labels", x.shape[0])
        fields[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(x))
        fields[f"{split}_y"] = torch.from_numpy(y)
    if fields["train_y"].numel() == 0:
        raise ValueError("train_images must hold at least one sample, got 0")
    num_classes = 1 + max(int(fields[f"{s}_y"].max()) for s in _SPLITS if fields[f"{s}_y"].numel())
    return NpzData(**fields, num_classes=num_classes)


def _read(path: Path) -> np.ndarray:
    from rprselect.pool_files import _read_png

    try:
        a = _read_png(path)
    except ImportError:
        raise
    except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, ...
        raise ValueError(f"file {path} is not a readable PNG: {err}") from err
    return np.asarray(a, dtype=np.float32)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` blocks of ``(C, H, W)``; rows and columns beyond a multiple of f go."""
    c, h, w = a.shape
    h, w = h - h % f, w - w % f
    return a[:, :h, :w].reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def _pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    for sub in ("image", "label"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(
                f"dir must hold the folders image/ and label/, got no {sub}/ in {folder}"
            )
    images = {p.name: p for p in (folder / "image").iterdir() if p.suffix.lower() == ".png"}
    labels = {p.name: p for p in (folder / "label").iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise ValueError(f"dir must hold PNG files in image/, got none in {folder / 'image'}")
    only_img, only_lab = sorted(set(images) - set(labels)), sorted(set(labels) - set(images))
    if only_img or only_lab:
        raise ValueError(
            f"every image/*.png needs a label/*.png of the same name; unmatched in image/: "
            f"{only_img[:10]}{' ...' if len(only_img) > 10 else ''}, unmatched in label/: "
            f"{only_lab[:10]}{' ...' if len(only_lab) > 10 else ''}"
        )
    return [(name, images[name], labels[name]) for name in sorted(images)]


def _tiles(h: int, w: int, tile: int | None) -> Sequence[tuple[int, int]]:
    if tile is None:
        return [(0, 0)]
    return [(r, c) for r in range(0, h - tile + 1, tile) for c in range(0, w - tile + 1, tile)]


def load_pngseg(
    dir: str | Path,
    downsample: int = 1,
    tile: int | None = None,
    invert_label: bool = False,
) -> SegData:
    """Load binary 2-D segmentation pairs ``image/NAME.png`` and ``label/NAME.png``.

    The label is read as grey values :math:`\\ell \\in [0, 1]` (8-bit / 255, 16-bit / 65535; a
    colour label is averaged over its colour channels) and binarised as :math:`\\ell > 0.5`, or
    :math:`\\ell \\le 0.5` with ``invert_label``. With ``downsample = F`` the image becomes the mean
    of each ``F x F`` block and the label the majority of the block (foreground when at least
    half of its pixels are); rows and columns beyond a multiple of F are dropped. With
    ``tile = T`` each image is cut into non-overlapping ``T x T`` tiles from the top-left corner
    (the remainder at the right and bottom edges is dropped).

    Args:
        dir: a folder holding ``image/`` and ``label/``.
        downsample: block size ``F >= 1``.
        tile: tile edge ``T >= 1`` after downsampling, or ``None`` for whole images (which then
            must all have the same size).
        invert_label: foreground is the dark part of the label.

    Returns:
        :class:`SegData`, sorted by file name (then tile position).

    Raises:
        FileNotFoundError: if ``dir/image`` or ``dir/label`` is missing.
        ValueError: unmatched names, an unreadable file, an image and label of different sizes,
            images of different sizes or channels without ``tile``, an image smaller than a tile,
            or bad ``downsample``/``tile``.
    """
    for name, value in (("downsample", downsample), ("tile", tile)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    folder = Path(dir)
    xs: list[np.ndarray] = []
    ms: list[np.ndarray] = []
    ids: list[str] = []
    sources: list[str] = []
    for name, img_path, lab_path in _pairs(folder):
        img, lab = _read(img_path), _read(lab_path).mean(axis=0, keepdims=True)
        if img.shape[1:] != lab.shape[1:]:
            raise ValueError(
                f"label/{name} must have the size (H, W) = {img.shape[1:]} of image/{name}, "
                f"got {lab.shape[1:]}"
            )
        fg = (lab <= 0.5) if invert_label else (lab > 0.5)
        img, mask = _block_mean(img, downsample), _block_mean(fg.astype(np.float32), downsample)
        mask = mask[0] >= 0.5
        h, w = mask.shape
        if tile is not None and (h < tile or w < tile):
            raise ValueError(
                f"tile must fit in every image; image/{name} is {h} x {w} after downsample="
                f"{downsample}, got tile={tile}"
            )
        size = tile if tile is not None else None
        for r, c in _tiles(h, w, tile):
            rr, cc = (slice(r, r + size), slice(c, c + size)) if size else (slice(None),) * 2
            x = np.ascontiguousarray(img[:, rr, cc])
            if xs and x.shape != xs[0].shape:
                raise ValueError(
                    f"image/{name} must have the (C, H, W) = {xs[0].shape} of image/{sources[0]} "
                    f"(after downsampling; pass tile= to cut equal patches), got {x.shape}"
                )
            xs.append(x)
            ms.append(np.ascontiguousarray(mask[rr, cc]))
            ids.append(f"{name}@{r},{c}" if tile is not None else name)
            sources.append(name)
    images = torch.from_numpy(np.stack(xs).astype(np.float32))
    masks = torch.from_numpy(np.stack(ms).astype(np.int64))
    return SegData(images=images, masks=masks, ids=ids, sources=sources)
