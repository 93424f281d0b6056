"""Metrics of the failure-prediction benchmark: AUROC, bootstrap intervals, top-fraction rates.

A score is a *utility*: higher means "more suspicious" (query first). For a binary outcome
("the model is wrong here", "Dice in the worst quartile") the AUROC is the Mann-Whitney
statistic with tied scores counted one half,

.. math:: \\mathrm{AUROC} = P(u_+ > u_-) + \\tfrac12 P(u_+ = u_-)
    = \\frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-},

where :math:`R_+` is the sum of the average ranks (ties share their mean rank) of the
:math:`n_+` positives among all :math:`n_+ + n_-` samples. Our own small function, checked
against a hand computation and scikit-learn in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "average_ranks",
    "auroc",
    "roc_curve",
    "bootstrap_replicates",
    "bootstrap_aurocs",
    "interval",
    "top_mean",
    "enrichment",
]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (1 = smallest); tied values share the mean of their ranks."""
    v = np.asarray(x, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each group of ties
    return np.asarray((ends - (counts - 1) / 2.0)[inverse], dtype=np.float64)


def _check(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(score, dtype=np.float64).ravel()
    p = np.asarray(positive).ravel()
    if p.dtype != np.bool_:
        if not np.isin(p, (0, 1)).all():
            raise ValueError("positive must be boolean or 0/1, got other values")
        p = p.astype(bool)
    if s.shape != p.shape:
        raise ValueError(f"score and positive must have the same length, got {s.size}, {p.size}")
    if np.isnan(s).any():
        raise ValueError("score must not contain NaN")
    return s, p


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``score`` for ``positive`` (rank-based Mann-Whitney, ties averaged).

    Args:
        score: ``(N,)`` utilities, higher = predicted positive.
        positive: ``(N,)`` booleans (or 0/1).

    Returns:
        The AUROC in ``[0, 1]``; NaN when all samples are positive or all negative.

    Raises:
        ValueError: lengths differ, ``positive`` is not binary, or ``score`` has NaN.
    """
    s, p = _check(score, positive)
    n_pos = int(p.sum())
    n_neg = p.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r_pos = float(average_ranks(s)[p].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_curve(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Tied scores form one step, so the trapezoid area under the curve equals :func:`auroc`.
    """
    s, p = _check(score, positive)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    last = np.append(np.flatnonzero(np.diff(s) != 0), s.size - 1)  # end of each tie group
    tp = np.cumsum(p)[last]
    fp = (last + 1) - tp
    return np.concatenate([[0.0], fp / n_neg]), np.concatenate([[0.0], tp / n_pos])


def bootstrap_replicates(
    scores: Mapping[str, np.ndarray], positive: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """AUROC of every score on the same ``n_boot`` resamples (paired), ``name -> (n_boot,)``.

    Samples are drawn with replacement; a resample holding a single class is redrawn. Because
    every score sees the same resamples, ``reps[a] - reps[b]`` is a paired bootstrap of the
    difference. With one class only in ``positive`` every replicate is NaN.

    Raises:
        ValueError: ``n_boot < 10``.
    """
    if n_boot < 10:
        raise ValueError(f"n_boot must be >= 10, got {n_boot}")
    p = np.asarray(positive, dtype=bool).ravel()
    names = list(scores)
    reps = {name: np.full(n_boot, np.nan) for name in names}
    if p.all() or not p.any():
        return reps
    rng = np.random.default_rng(seed)
    b = 0
    while b < n_boot:
        idx = rng.integers(0, p.size, p.size)
        if p[idx].all() or not p[idx].any():
            continue
        for name in names:
            reps[name][b] = auroc(np.asarray(scores[name])[idx], p[idx])
        b += 1
    return reps


def interval(reps: np.ndarray) -> tuple[float, float]:
    """The percentile 95% interval of bootstrap replicates (NaN when they are)."""
    if np.isnan(reps).any():
        return float("nan"), float("nan")
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_aurocs(
    scores: Mapping[str, np.ndarray],
    positive: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    reference: str | None = None,
) -> dict[str, dict[str, float]]:
    """AUROC of every score with its percentile-bootstrap 95% interval (shared resamples).

    Args:
        scores: name -> ``(N,)`` utilities.
        positive: ``(N,)`` booleans.
        n_boot: number of resamples (>= 10).
        seed: seed of the resamples.
        reference: a key of ``scores``; adds the paired difference
            ``AUROC(score) - AUROC(reference)`` and its interval (``diff``, ``diff_lo``,
            ``diff_hi``).

    Returns:
        name -> ``{"auroc", "lo", "hi"}`` (+ the difference keys); NaN when ``positive`` has a
        single class.
    """
    if reference is not None and reference not in scores:
        raise ValueError(f"reference must be one of {sorted(scores)}, got {reference!r}")
    reps = bootstrap_replicates(scores, positive, n_boot, seed)
    out: dict[str, dict[str, float]] = {}
    for name in scores:
        point = auroc(scores[name], positive)
        lo, hi = interval(reps[name])
        out[name] = {"auroc": point, "lo": lo, "hi": hi}
        if reference is not None:
            dlo, dhi = interval(reps[name] - reps[reference])
            diff = point - auroc(scores[reference], positive)
            out[name].update(diff=diff, diff_lo=dlo, diff_hi=dhi)
    return out


def top_mean(score: np.ndarray, values: np.ndarray, fraction: float = 0.1) -> float:
    """Mean of ``values`` over the ``fraction`` of samples with the highest ``score``.

    The top set has :math:`n = \\lceil f N \\rceil` samples. Samples tied with the n-th highest
    score enter fractionally (each with weight ``slots / ties``), which is the expectation over
    a random order of the ties, so the result does not depend on the pool order.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if s.shape != v.shape or s.size == 0:
        raise ValueError(f"score and values must be non-empty, same length; got {s.size}, {v.size}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must satisfy 0 < fraction <= 1, got {fraction}")
    n = math.ceil(fraction * s.size)
    threshold = np.sort(s)[::-1][n - 1]
    above, tied = s > threshold, s == threshold
    slots = n - int(above.sum())
    total = v[above].sum() + slots * v[tied].mean()
    return float(total / n)


def enrichment(score: np.ndarray, positive: np.ndarray, fraction: float = 0.1) -> dict[str, float]:
    """Error enrichment: the positive rate among the ``fraction`` most suspicious samples over
    the base rate (:func:`top_mean` of the 0/1 outcome divided by its mean).

    Returns:
        ``{"top_rate", "base_rate", "enrichment"}``; enrichment is NaN when the base rate is 0.
    """
    s, p = _check(score, positive)
    top = top_mean(s, p.astype(np.float64), fraction)
    base = float(p.mean())
    return {"top_rate": top, "base_rate": base, "enrichment": top / base if base else math.nan}
