"""RPR as a baal heuristic.

baal ranks a pool with a *heuristic*: ``heuristic.get_ranks(predictions)`` turns what
``ActiveLearningLoop``'s ``get_probabilities(pool)`` returned into one score per sample and
orders the pool by it, highest first for a ``reverse=True`` heuristic. Here the "predictions"
are the pool's precomputed RPR values (:func:`pool_rpr` is a ready ``get_probabilities``), and
:class:`RPRHeuristic` ranks them lowest-RPR first (paper Section 1.2: a low RPR means x lies
near the nullspace of A[x], where the model is likely to fail).

baal's ``CombineHeuristics`` adds the heuristics' raw scores with weights before ranking, so a
score must be on a scale comparable to the others: RPR values of a pool can all lie within
1e-6 of each other, or span decades. The heuristic therefore scores by rank,

.. math:: u_i = 1 - \\frac{\\operatorname{rank}(\\mathrm{RPR}_i)}{n - 1} \\in [0, 1],

with rank 0 the lowest RPR (ties share their mean rank); ``u`` = 1 is proposed first, and the
weights of ``CombineHeuristics`` then mean what they say.

Needs ``pip install 'rprselect[baal]'`` (and baal itself, see scripts/install.sh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from rprselect.scoring import score

_EXTRA = "pip install 'rprselect[baal]' (and baal itself, see scripts/install.sh)"
try:
    from baal.active.heuristics import AbstractHeuristic
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(f"rprselect.integrations.baal needs baal: {_EXTRA}") from _err

__all__ = ["RPRHeuristic", "rank_normalise", "pool_rpr"]


def rank_normalise(rpr: Any) -> np.ndarray:
    """``1 - rank / (n - 1)`` of each value, lowest value 1 and highest 0 (ties: mean rank).

    Args:
        rpr: ``(n,)`` RPR values, or ``(n, k)`` RPR curves (the value at rank k is used).

    Returns:
        ``(n,)`` float64 utilities in ``[0, 1]``; a single sample gets 1.

    Raises:
        ValueError: an empty array, more than two axes, or NaN/Inf values.
    """
    r = np.asarray(rpr, dtype=np.float64)
    if r.ndim == 2:
        r = r[:, -1]
    if r.ndim != 1 or r.size == 0:
        raise ValueError(
            f"rpr must be (n,) values or (n, k) curves with n >= 1, got shape {np.shape(rpr)}"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError(f"rpr must be finite, got {int((~np.isfinite(r)).sum())} NaN/Inf values")
    if r.size == 1:
        return np.ones(1)
    order = np.argsort(r, kind="stable")
    ranks = np.empty(r.size)
    ranks[order] = np.arange(r.size, dtype=np.float64)
    _, inverse, counts = np.unique(r, return_inverse=True, return_counts=True)
    mean_rank = np.bincount(inverse, weights=ranks) / counts  # ties share their mean rank
    return 1.0 - mean_rank[inverse] / (r.size - 1)


class RPRHeuristic(AbstractHeuristic):
    """Rank a pool by its precomputed RPR, lowest first, with rank-normalised scores.

    ``predictions`` (what ``get_probabilities`` returns, e.g. :func:`pool_rpr`) are the pool's
    RPR values ``(n,)`` or curves ``(n, k)`` in pool order, given as one array (baal scores
    each chunk of a generator on its own, which would rank each chunk separately).

    Args:
        reduction: baal's reduction after scoring; the scores are already one per sample.
    """

    def __init__(self, reduction: str = "none") -> None:
        super().__init__(reverse=True, reduction=reduction)

    def compute_score(self, predictions: Any, target_predictions: Any = None) -> np.ndarray:
        """The utilities :func:`rank_normalise` of the RPR values; highest is proposed first."""
        return rank_normalise(predictions)


def pool_rpr(pool: Any, model: nn.Module, k: int = 10, **score_kwargs: Any) -> np.ndarray:
    """RPR at rank k of every sample of a pool (e.g. a baal ``ActiveLearningDataset.pool``,
    whose items are ``(image, label)``), in pool order: a ``get_probabilities`` for
    ``ActiveLearningLoop(..., get_probabilities=pool_rpr, heuristic=RPRHeuristic(),
    model=net, k=10)``.

    Raises:
        ValueError: a sample that cannot be scored (see :func:`rprselect.score`).
    """
    score_kwargs.setdefault("progress", False)
    return score(model, pool, k=k, **score_kwargs).rpr
