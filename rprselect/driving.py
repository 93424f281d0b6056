"""What the two scoring drivers share: settings from keywords, the model's device, labels,
batch sizes, one shape group through the engine, the progress bar and the end-of-run report.

:mod:`rprselect.scoring` (one process) and :mod:`rprselect.distributed` (torchrun) both import
this module and :mod:`rprselect.engine`, and never each other.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .engine import Engine, RankError, default_batch_size
from .pool import FilePool, PoolItem
from .settings import ScoreSettings
from .solvers import NotConvergedWarning, SolverConfig
from .table import Failure, ScoreTable

__all__ = [
    "settings_from",
    "model_device",
    "labels_array",
    "records_failures",
    "batch_for",
    "score_group",
    "progress_bar",
    "warn_summary",
]


def settings_from(settings: ScoreSettings | None, **keywords: Any) -> ScoreSettings:
    """``settings`` when given (then every keyword must be at its default), else the keywords.

    Raises:
        TypeError: ``settings`` is not a ScoreSettings, or it comes with other keywords.
    """
    config = keywords.pop("config", None)
    if settings is None:
        return ScoreSettings(**keywords, config=config or SolverConfig())
    if not isinstance(settings, ScoreSettings):
        raise TypeError(f"settings must be a ScoreSettings, got {type(settings).__name__}")
    base = ScoreSettings()
    given = [n for n, v in keywords.items() if v != getattr(base, n)]
    if config is not None:
        given.append("config")
    if given:
        raise TypeError(f"pass either settings= or its keywords, not both; got also {given}")
    return settings


def model_device(model: nn.Module, settings: ScoreSettings) -> tuple[torch.device, torch.dtype]:
    """Move the model to ``settings.device`` (if set); the device and dtype to score in."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if settings.device is not None:
        model.to(settings.device)
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    dev = torch.device(settings.device) if settings.device else None
    dev = dev or (p.device if p is not None else torch.device("cpu"))
    return dev, p.dtype if p is not None else torch.float32


def labels_array(labels: Any, n: int | None) -> Tensor:
    """Labels as a 1-D int64 tensor, one per pool sample."""
    lab = torch.as_tensor(np.asarray(labels))
    if lab.dim() != 1 or lab.is_floating_point():
        raise ValueError(
            f"labels must be a 1-D sequence of class indices, got shape "
            f"{tuple(lab.shape)} and dtype {lab.dtype}"
        )
    if n is not None and lab.numel() != n:
        raise ValueError(f"labels must have one entry per pool sample ({n}), got {lab.numel()}")
    return lab.long()


def records_failures(settings: ScoreSettings, pool: Any) -> bool:
    """Whether an unusable sample is recorded (``errors="auto"``: for file pools) or raised."""
    return settings.errors == "record" or (settings.errors == "auto" and isinstance(pool, FilePool))


def batch_for(settings: ScoreSettings, shape: tuple[int, ...], n: int | None) -> int:
    """Samples per batch for samples of ``shape``: one for sliding windows, else the setting or
    :func:`~rprselect.engine.default_batch_size`."""
    if settings.roi_size is not None:
        return 1
    return settings.batch_size or default_batch_size(math.prod(shape), n)


def score_group(
    engine: Engine,
    group: list[tuple[PoolItem, str]],
    device: torch.device,
    dtype: torch.dtype,
    record: bool,
) -> tuple[list[dict[str, Any]], list[Failure]]:
    """One batch of same-shape samples, each with the content hash the driver already took,
    through the engine, as rows with ``id`` and ``content``; a batch the model (or k) rejects is
    recorded as failures of its samples when ``record``, else raised."""
    items = [it for it, _ in group]
    X = torch.stack([it.x for it in items if it.x is not None]).to(device, dtype)
    try:
        rows = engine.score_batch(X, [it.index for it in items])
    except RankError:  # a setting, not a sample, is wrong: stop here
        raise
    except ValueError as err:
        if not record:
            shown = ", ".join(f"{it.id!r} (index {it.index})" for it in items[:5])
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            raise ValueError(
                f"pool item(s) {shown}{more} of shape {tuple(X.shape[1:])} could not be "
                f"scored: {err}"
            ) from err
        return [], [Failure(it.id, it.index, str(err)) for it in items]
    return [
        {"id": it.id, "content": h, **row} for (it, h), row in zip(group, rows, strict=True)
    ], []


# -- what both drivers show the user -----------------------------------------------------------
class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, enabled: bool, initial: int = 0) -> Any:
    """A tqdm bar over samples (or a silent stand-in when disabled or tqdm is missing)."""
    if not enabled:
        return _Silent()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar then
        return _Silent()
    return tqdm(total=total, initial=initial, unit="sample", desc="scoring", dynamic_ncols=True)


def warn_summary(table: ScoreTable, tol: float | str, failures: Sequence[Failure]) -> None:
    """One warning for the samples that missed ``tol``, one for those that could not be scored."""
    bad = [table.ids[i] for i in np.flatnonzero(~table.converged)]
    if bad:
        shown = ", ".join(bad[:20]) + (", ..." if len(bad) > 20 else "")
        what = (
            "an RPR(x; k) not certified within rank_delta (tol='rank')"
            if isinstance(tol, str)
            else f"singular triplets that missed tol={tol:g}"
        )
        warnings.warn(
            f"{len(bad)} of {len(table)} samples have {what} (converged=False in the table): "
            f"{shown}",
            NotConvergedWarning,
            stacklevel=3,
        )
    if failures:
        shown = "; ".join(f"{f.id}: {f.reason}" for f in failures[:10])
        more = f"; and {len(failures) - 10} more" if len(failures) > 10 else ""
        warnings.warn(
            f"{len(failures)} sample(s) could not be scored (listed in the table's "
            f"failures): {shown}{more}",
            UserWarning,
            stacklevel=3,
        )
