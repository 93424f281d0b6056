"""Pictures of what is proposed: a montage of the proposed samples and the pool's RPR histogram.

:func:`plot_proposals` draws one figure with

- a montage of the proposed samples (lowest RPR first), each titled with its id and RPR at
  rank k; a volume shows its middle axial slice (the middle of the last spatial axis, the
  axial axis of a NIfTI volume in RAS order), and with ``model`` given the model's predicted
  label map is laid over it (a classifier's predicted class goes in the title instead);
- the histogram of RPR over the whole scored pool, with the proposals marked.

``rprselect select --plot proposals.png`` and the MONAI handler
(:class:`rprselect.integrations.RPRHandler` with ``output_dir``) draw the same figure.
matplotlib is imported only when a figure is drawn (``pip install 'rprselect[extras]'``); the
figure is built with ``matplotlib.figure.Figure``, so no pyplot state or backend is touched.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .select import Selection
from .table import ScoreTable

__all__ = ["plot_proposals", "middle_slice", "predicted_labels"]

_EXTRA = "pip install 'rprselect[extras]'"


def middle_slice(x: Any) -> np.ndarray:
    """The 2-D picture of one sample ``(C, *spatial)``: its first channel, and for a volume
    ``(C, D, H, W)`` the middle of the last spatial axis, ``x[0, :, :, W // 2]``.

    Raises:
        ValueError: a sample with no spatial axis or more than three.
    """
    a = _numpy(x)
    if a.ndim == 2:  # (H, W) without channel
        return a
    if a.ndim == 3:
        return a[0]
    if a.ndim == 4:
        return a[0, :, :, a.shape[3] // 2]
    raise ValueError(
        f"a sample must have shape (C, H, W) or (C, D, H, W), got shape {tuple(a.shape)}"
    )


def predicted_labels(model: nn.Module, x: Any) -> np.ndarray | int:
    """The model's prediction for one sample: the label map ``argmax_c F(x)`` when the output
    keeps the input's spatial shape (segmentation), else the predicted class (an int)."""
    t = torch.as_tensor(_numpy(x))
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    t = t.to(p.device if p is not None else "cpu", p.dtype if p is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(t[None])[0]
    finally:
        model.train(was_training)
    if out.dim() == 1:
        return int(out.argmax())
    return out.argmax(0).cpu().numpy()


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().float().numpy()
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor
        return x.as_tensor().detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _chosen(
    table: ScoreTable, selection: Selection | Sequence[str]
) -> tuple[list[str], np.ndarray]:
    """The proposed ids and their RPR (from the table when only ids are given)."""
    if isinstance(selection, Selection):
        return list(selection.ids), np.asarray(selection.scores, dtype=np.float64)
    if isinstance(selection, str) or not isinstance(selection, Sequence):
        raise TypeError(
            f"selection must be a Selection or a sequence of ids, got {type(selection).__name__}"
        )
    rows = {sid: r for r, sid in enumerate(table.ids)}
    missing = [str(s) for s in selection if str(s) not in rows]
    if missing:
        raise ValueError(f"selection names ids that are not in the table: {missing[:5]}")
    ids = [str(s) for s in selection]
    return ids, np.asarray([table.rpr[rows[s]] for s in ids], dtype=np.float64)


def _getter(images: Any, table: ScoreTable, image_key: str = "image") -> Callable[[str], Any]:
    """How to fetch the sample of an id from ``images``."""
    if callable(images) and not isinstance(images, nn.Module | Tensor):
        return images  # type: ignore[no-any-return]
    if isinstance(images, Mapping):
        return lambda sid: images[sid]
    ids = getattr(images, "ids", None)
    if isinstance(ids, Sequence) and not isinstance(ids, str):  # a FilePool: look up by id
        where = {str(s): i for i, s in enumerate(ids)}
        return lambda sid: images[where[sid]]
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        rows = {sid: int(i) for sid, i in zip(table.ids, table.index, strict=True)}

        def by_position(sid: str) -> Any:
            item = images[rows[sid]]
            if isinstance(item, tuple | list):  # (image, label) items
                item = item[0]
            if isinstance(item, Mapping):
                item = item[image_key]
            return item

        return by_position
    raise TypeError(
        "images must be a mapping id -> sample, a callable, a FilePool or a sequence indexed "
        f"by pool position, got {type(images).__name__}"
    )


def _matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"plot_proposals needs matplotlib: {_EXTRA}") from err
    return Figure


def plot_proposals(
    table: ScoreTable,
    selection: Selection | Sequence[str],
    images: Any = None,
    *,
    model: nn.Module | None = None,
    path: str | os.PathLike[str] | None = None,
    max_images: int = 12,
    columns: int = 6,
    bins: int = 30,
    title: str | None = None,
    image_key: str = "image",
) -> Any:
    """Draw the proposed samples with their RPR and the pool's RPR histogram.

    Args:
        table: the scores of the whole pool (:func:`rprselect.score`).
        selection: what was proposed: a :class:`~rprselect.Selection` or a list of ids.
        images: where the proposed samples are, for the montage: a mapping id -> sample, a
            callable ``f(id)``, a :class:`~rprselect.pool_files.FilePool` (looked up by id),
            or a tensor/sequence/Dataset indexed by pool position (``table.index``).
            ``None`` draws the histogram only.
        model: lay the model's prediction over each picture (segmentation), or put its
            predicted class in the title (classifier).
        path: write the figure there as PNG (the folder is created).
        max_images: the montage shows at most this many proposals.
        columns: montage columns.
        image_key: the image's key in dict items of ``images``.
        bins: histogram bins (log-spaced when the pool's RPR spans over two decades).
        title: figure title.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is missing.
        ValueError: an empty table, ids not in the table, or bad sizes.
        TypeError: a selection or ``images`` of the wrong type.
    """
    for name, value in (("max_images", max_images), ("columns", columns), ("bins", bins)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if len(table) == 0:
        raise ValueError("table must hold at least one scored sample, got 0")
    ids, scores = _chosen(table, selection)
    Figure = _matplotlib()
    shown = ids[:max_images] if images is not None else []
    ncol = max(1, min(columns, len(shown)))
    nrow = math.ceil(len(shown) / ncol)
    fig = Figure(figsize=(2.2 * max(ncol, 4), 2.4 * nrow + 2.8), layout="constrained")
    grid = fig.add_gridspec(nrow + 1, ncol, height_ratios=[1.0] * nrow + [1.15])
    if shown:
        fetch = _getter(images, table, image_key)
        for j, (sid, value) in enumerate(zip(shown, scores, strict=False)):
            ax = fig.add_subplot(grid[j // ncol, j % ncol])
            _tile(ax, fetch(sid), sid, float(value), j + 1, model)
    _histogram(fig.add_subplot(grid[nrow, :]), table, ids, scores, bins)
    if title:
        fig.suptitle(title)
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def _tile(ax: Any, x: Any, sid: str, value: float, rank: int, model: nn.Module | None) -> None:
    picture = middle_slice(x)
    spatial = _numpy(x).ndim - 1
    pictured = np.rot90(picture) if spatial == 3 else picture
    ax.imshow(pictured, cmap="gray", interpolation="nearest")
    head = f"#{rank} {_short(sid)}\nRPR {value:.4g}"
    if model is not None:
        pred = predicted_labels(model, x)
        if isinstance(pred, int):
            head += f", pred {pred}"
        else:
            mask = pred if pred.ndim == 2 else pred[:, :, pred.shape[2] // 2]
            mask = np.rot90(mask) if spatial == 3 else mask
            ax.imshow(
                np.ma.masked_equal(mask, 0), cmap="autumn", alpha=0.45, interpolation="nearest"
            )
    ax.set_title(head, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _short(sid: str, n: int = 22) -> str:
    return sid if len(sid) <= n else "..." + sid[-(n - 3) :]


def _histogram(ax: Any, table: ScoreTable, ids: list[str], scores: np.ndarray, bins: int) -> None:
    values = np.asarray(table.rpr, dtype=np.float64)
    finite = values[np.isfinite(values)]
    log = finite.size > 1 and finite.min() > 0 and finite.max() / finite.min() > 100
    edges: Any = np.geomspace(finite.min(), finite.max(), bins + 1) if log else bins
    ax.hist(finite, bins=edges, color="0.65", label=f"pool ({len(values)})")
    for j, s in enumerate(scores):
        ax.axvline(
            float(s), color="tab:red", lw=1.0, label=f"proposed ({len(ids)})" if j == 0 else None
        )
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"RPR at rank k={table.k} (low: proposed first)")
    ax.set_ylabel("samples")
    ax.legend(loc="upper right", fontsize=8)


def plot_from_files(
    table: ScoreTable,
    selection: Selection | Sequence[str],
    path: str | os.PathLike[str],
    *,
    pool: str | None = None,
    model: str | None = None,
    weights: str | None = None,
) -> Any:
    """:func:`plot_proposals` for ``rprselect select --plot``: the pool given as a folder, file
    or glob (as ``rprselect score --pool`` took it) and the model as ``package.module:factory``
    with an optional state dict.

    Raises:
        ValueError: ``weights`` without ``model``; and what :func:`plot_proposals`,
            :func:`~rprselect.pool_files.load_pool` and
            :func:`~rprselect.checkpoints.load_model` raise.
    """
    if weights is not None and model is None:
        raise ValueError("--weights needs --model (the network to load them into)")
    net = None
    if model is not None:
        from .checkpoints import load_model

        cwd = os.getcwd()  # --model may name a module of the current folder, as in `score`
        if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
            sys.path.insert(0, cwd)
        net = load_model(model, weights)
    images = None
    if pool is not None:
        from .pool_files import load_pool

        images = load_pool(pool, model=net)
    return plot_proposals(table, selection, images, model=net, path=path)
