"""How a pool is scored, in one frozen object validated once at the boundary.

:class:`ScoreSettings` holds every knob that changes the numbers :func:`~rprselect.score`
produces: the rank, the tolerance, the solver and its configuration, how the model is
linearised, batching, the device, sliding-window options, label handling and what to do with
an unusable sample. Both drivers (one process, :mod:`rprselect.scoring`; torchrun,
:mod:`rprselect.distributed`) take it, and :meth:`ScoreSettings.fingerprint` is the one key of
the score cache, so a cache written by either driver resumes under the other.

The exception rule, everywhere: a value of the wrong *type* raises ``TypeError``; a value of
the right type outside its range raises ``ValueError``. Both name the parameter, what was
expected and what was received.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .cache import weights_hash
from .solvers import SolverConfig

__all__ = ["ScoreSettings", "DEFAULT_K", "RANK_BACKSTOP_TOL", "weights_hash", "content_hash"]

Errors = Literal["auto", "raise", "record"]

#: the rank used when ``k`` is not given, capped by the rank of A[x] (:meth:`ScoreSettings.rank`)
DEFAULT_K = 10

#: the residual tolerance that ends a ranking-mode solve (``tol="rank"``) whose RPRs could not be
#: certified to ``rank_delta`` first (e.g. σ_k = σ_{k+1}, where RPR(x; k) is ill-defined)
RANK_BACKSTOP_TOL = 1e-6

_SOLVERS = ("auto", "dense", "lanczos", "slepc")
_METHODS = ("auto", "adjoint", "autograd")
_ERRORS = ("auto", "raise", "record")
_SLIDING = ("overlap", "mode", "sigma_scale", "sw_batch_size", "padding_mode")


def _int(name: str, value: Any, low: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        expected = "an int or None" if allow_none else "an int"
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _device(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | torch.device):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(value).__name__}")
    try:
        dev = torch.device(value)
    except RuntimeError as err:
        raise ValueError(
            f"device must name a torch device such as 'cpu', 'cuda' or 'cuda:1', got {value!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {str(value)!r}, but this torch build or machine has no CUDA")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"device is {str(value)!r}, but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return str(dev)


@dataclass(frozen=True)
class ScoreSettings:
    """Everything that decides the scores of a pool (validated in ``__post_init__``).

    Args:
        k: singular triplets per sample; ``None`` (the default) takes
            ``min(DEFAULT_K, min(m, n))`` for the model at hand (e.g. 2 for a binary
            classifier) and says so with a warning when it is below ``DEFAULT_K``.
        tol: relative residual tolerance of the solver, ``> 0``; or ``"rank"``, the ranking
            mode: the Lanczos solve of a batch stops once every sample's RPR(x; k) is
            certified to within ``rank_delta`` (:class:`~rprselect.solvers.ranking.RankStop`,
            bounds from the Ritz values and residuals), with :data:`RANK_BACKSTOP_TOL` as the
            residual tolerance that ends it otherwise. Only ``solver="lanczos"`` and
            ``"auto"`` support it (``"auto"`` may pick the exact dense solver, whose RPRs are
            exact). In this mode a row's ``converged`` means "RPR(x; k) certified within
            ``rank_delta``" (always true for the dense solver), not "every triplet met a
            residual tolerance"; ``rpr_curve`` entries below rank k are Ritz estimates.
        rank_delta: the absolute accuracy of RPR(x; k) wanted in the ranking mode, in
            ``(0, 1)``; ignored (and left out of the cache key) when ``tol`` is a number.
        solver: ``"auto"``, ``"dense"``, ``"lanczos"`` or ``"slepc"``.
        method: how to linearise: ``"auto"``, ``"adjoint"`` or ``"autograd"``.
        config: solver knobs (:class:`~rprselect.SolverConfig`).
        batch_size: samples per batch; ``None`` picks
            :func:`~rprselect.engine.default_batch_size` of the sample size.
        device: where to run (``"cpu"``, ``"cuda:0"``, ...); ``None`` keeps the model's.
        roi_size: score each volume through sliding windows of this size; ``None`` scores
            whole samples.
        sliding: further sliding-window options (``overlap``, ``mode``, ``sigma_scale``,
            ``sw_batch_size``, ``padding_mode``); needs ``roi_size``.
        num_classes: classes of the label maps for LPR; ``None`` takes the output size.
        label_scale: the value of the label logit map (the paper's ±2, Eq. 13).
        errors: an unusable sample is ``"raise"``-d, ``"record"``-ed in
            ``ScoreTable.failures``, or ``"auto"`` (record for file pools, raise otherwise).
        image_key: the key of the image in dict items.

    Raises:
        TypeError: a setting of the wrong type.
        ValueError: a setting of the right type outside its range.
    """

    k: int | None = None
    tol: float | str = 1e-4
    rank_delta: float = 0.01
    solver: str = "auto"
    method: str = "auto"
    config: SolverConfig = field(default_factory=SolverConfig)
    batch_size: int | None = None
    device: str | None = None
    roi_size: tuple[int, ...] | None = None
    sliding: Mapping[str, Any] | None = None
    num_classes: int | None = None
    label_scale: float = 2.0
    errors: Errors = "auto"
    image_key: str = "image"

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        _int("k", self.k, 1, allow_none=True)
        if isinstance(self.tol, str):
            if self.tol != "rank":
                raise ValueError(f"tol must be a finite float > 0 or 'rank', got {self.tol!r}")
        elif isinstance(self.tol, bool) or not isinstance(self.tol, int | float):
            raise TypeError(
                f"tol must be a float or 'rank', got {type(self.tol).__name__} {self.tol!r}"
            )
        elif not (self.tol > 0 and np.isfinite(self.tol)):
            raise ValueError(f"tol must be a finite float > 0 or 'rank', got {self.tol}")
        else:
            set_(self, "tol", float(self.tol))
        delta = self.rank_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float | np.floating):
            raise TypeError(f"rank_delta must be a float, got {type(delta).__name__} {delta!r}")
        if not 0 < delta < 1:
            raise ValueError(f"rank_delta must be in (0, 1), got {delta}")
        set_(self, "rank_delta", float(delta))
        if self.tol == "rank" and self.solver in ("dense", "slepc"):
            raise ValueError(
                f"tol='rank' needs solver 'lanczos' or 'auto' (the ranking mode stops the "
                f"Lanczos iteration), got solver={self.solver!r}"
            )
        _choice("solver", self.solver, _SOLVERS)
        _choice("method", self.method, _METHODS)
        _choice("errors", self.errors, _ERRORS)
        if not isinstance(self.config, SolverConfig):
            raise TypeError(f"config must be a SolverConfig, got {type(self.config).__name__}")
        _int("batch_size", self.batch_size, 1, allow_none=True)
        set_(self, "device", _device(self.device))
        if self.roi_size is not None:
            roi = (self.roi_size,) if isinstance(self.roi_size, int) else self.roi_size
            if isinstance(roi, str) or not isinstance(roi, Sequence):
                raise TypeError(f"roi_size must be a sequence of ints, got {self.roi_size!r}")
            set_(self, "roi_size", tuple(_int("roi_size entries", r, -1) for r in roi))
        if self.sliding is not None:
            if not isinstance(self.sliding, Mapping):
                raise TypeError(f"sliding must be a mapping, got {type(self.sliding).__name__}")
            if self.roi_size is None:
                raise ValueError("sliding options need roi_size, got roi_size=None")
            unknown = sorted(set(self.sliding) - set(_SLIDING))
            if unknown:
                raise ValueError(f"sliding keys must be among {list(_SLIDING)}, got {unknown}")
            set_(self, "sliding", dict(self.sliding))
        _int("num_classes", self.num_classes, 1, allow_none=True)
        if isinstance(self.label_scale, bool) or not isinstance(self.label_scale, int | float):
            raise TypeError(f"label_scale must be a float, got {type(self.label_scale).__name__}")
        if not self.label_scale > 0:
            raise ValueError(f"label_scale must be > 0, got {self.label_scale}")
        if not isinstance(self.image_key, str):
            raise TypeError(f"image_key must be a str, got {type(self.image_key).__name__}")

    @property
    def ranking(self) -> bool:
        """Whether the ranking mode (``tol="rank"``) is on."""
        return self.tol == "rank"

    @property
    def solver_tol(self) -> float:
        """The residual tolerance handed to the solver (:data:`RANK_BACKSTOP_TOL` in the
        ranking mode)."""
        return RANK_BACKSTOP_TOL if isinstance(self.tol, str) else self.tol

    # -- derived -----------------------------------------------------------------------------
    @property
    def window(self) -> dict[str, Any] | None:
        """The keyword arguments of :func:`~rprselect.sliding_window_operator`, or ``None``."""
        if self.roi_size is None:
            return None
        return {"roi_size": self.roi_size, **(self.sliding or {})}

    def rank(self, m: int, n: int) -> int:
        """The k to use for a matrix of size ``(m, n)``: ``k``, or the adaptive default.

        Raises:
            ValueError: an explicit ``k`` larger than ``min(m, n)``.
        """
        r = min(m, n)
        if self.k is None:
            return min(DEFAULT_K, r)
        if self.k > r:
            raise ValueError(f"k must satisfy 0 < k <= min(m, n) = {r}, got {self.k}")
        return self.k

    def replace(self, **changes: Any) -> ScoreSettings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def fingerprint(self, model: nn.Module, labels: Any = None) -> dict[str, Any]:
        """The cache key: the model's weights, the labels and every setting that changes a score.

        ``device``, ``batch_size`` and ``errors`` are left out: they change where and how fast
        the numbers are computed, not which numbers (to rounding), so a cache resumes on
        another device or with another batch size. The sample contents are keyed per row
        (:func:`content_hash`).
        """
        settings = {
            "k": self.k,
            "tol": self.tol,
            "solver": self.solver,
            "method": self.method,
            "config": _config_key(self.config),
            "window": self.window,
            "num_classes": self.num_classes,
            "label_scale": self.label_scale,
        }
        if self.ranking:  # only here: a numeric-tol key stays what it was before rank mode
            settings["rank_delta"] = self.rank_delta
        lab = None
        if labels is not None:
            lab = hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()
        return {
            "weights": weights_hash(model),
            "labels": lab,
            "settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
        }


def _config_key(config: SolverConfig) -> dict[str, Any]:
    """The solver knobs of the cache key; a default ``basis_dtype`` is left out, so that keys
    written before that knob existed still match."""
    key = dataclasses.asdict(config)
    if key.get("basis_dtype") == "float64":
        del key["basis_dtype"]
    return key


def content_hash(x: torch.Tensor) -> str:
    """SHA-256 (first 32 hex digits) of a sample as the model sees it: dtype, shape and bytes.

    The cache keys each row by this hash next to the sample id, so a file replaced by another
    with the same name is scored again instead of reusing a stale row. Hashing the loaded
    tensor rather than the file means the file is read again on resume; reading is cheap next
    to an SVD, and it catches every change that matters to the score (and none that does
    not, such as a touched mtime).
    """
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]
