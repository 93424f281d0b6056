"""Batch construction from any per-sample utility (higher = query first).

Three ways to turn a utility vector ``u`` of shape ``(N,)`` into a batch of ``n`` positions:

- :func:`stratified_batch`: quotas by predicted class, inversely proportional to the labelled
  class counts (class-balanced batches as in GALAXY, Cluster-Margin and ClaSP), each filled
  best-utility-first.
- :func:`power_batch`: stochastic power acquisition (Kirsch et al. 2023), sampling without
  replacement with :math:`P(i) \\propto s_i^{1/T}`.
- :func:`ranked_batch`: ranked batch-mode sampling (Cardoso et al. 2017, modAL's
  ``ranked_batch``), trading utility against distance to what is labelled or picked.

All three are pure functions of their arguments and an explicit ``numpy.random.Generator``;
:mod:`rprselect.acquisition` re-exports them.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["stratified_batch", "power_batch", "ranked_batch", "check_utility", "check_n"]


def check_utility(utility: Any, name: str = "utility") -> np.ndarray:
    """``utility`` as a float64 ``(N,)`` array without NaN.

    Raises:
        ValueError: not one-dimensional, or NaN entries.
    """
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (N,), got shape {u.shape}")
    bad = np.flatnonzero(np.isnan(u))
    if len(bad):
        raise ValueError(f"{name} must not contain NaN, got NaN at positions {bad[:5].tolist()}")
    return u


def check_n(n: Any, size: int, name: str = "n") -> int:
    """``n`` as an int in ``[1, size]``.

    Raises:
        TypeError: not an integer.
        ValueError: outside ``[1, size]``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if not 1 <= n <= size:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= {size} (the pool size), got {n}")
    return int(n)


def _rng(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def _best_first(u: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Positions by descending utility, ties broken at random."""
    return np.lexsort((gen.permutation(len(u)), -u))


def stratified_batch(
    utility: Any,
    pred: Any,
    labelled_counts: Any,
    n: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Class-stratified batch: quotas by predicted class, filled best-utility-first.

    Class ``c`` (``0 <= c < C`` with ``C = len(labelled_counts)``) gets the weight

    .. math:: w_c = \\frac{1}{n_c + 1},\\qquad
        q_c = \\text{largest-remainder rounding of } n\\,\\frac{w_c}{\\sum_{c'} w_{c'}}

    where :math:`n_c` is the number of labelled samples of class ``c`` (the +1 keeps a class
    without labels finite) and the sum runs over the classes predicted for at least one pool
    sample. Within a class, the :math:`q_c` samples of highest utility are taken. When a class
    has fewer candidates than its quota (spill-over), the free slots go to the best remaining
    samples of any class. Ties (in remainders and utilities) are broken with ``rng``.

    Args:
        utility: ``(N,)`` scores, higher = query first.
        pred: ``(N,)`` predicted class of each pool sample, integers in ``[0, C)``.
        labelled_counts: ``(C,)`` labelled samples per class.
        n: batch size, ``1 <= n <= N``.
        rng: Generator or seed for tie breaking (``None``: seed 0).

    Returns:
        ``(n,)`` int64 positions, grouped by class then best-first; spill-over last.

    Raises:
        ValueError: shapes disagree, classes out of range, negative counts, NaN utilities.
        TypeError: ``n`` is not an int.
    """
    u = check_utility(utility)
    N = len(u)
    n = check_n(n, N)
    p = np.asarray(pred)
    if p.shape != (N,) or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"pred must be an integer array of shape ({N},), got {p.dtype} {p.shape}")
    counts = np.asarray(labelled_counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any() or np.isnan(counts).any():
        raise ValueError(
            f"labelled_counts must be a 1-D array of counts >= 0, got {np.asarray(labelled_counts)}"
        )
    C = len(counts)
    if N and (p.min() < 0 or p.max() >= C):
        raise ValueError(f"pred must hold classes in [0, {C}), got range [{p.min()}, {p.max()}]")
    gen = _rng(rng)
    avail = np.bincount(p, minlength=C)
    w = np.where(avail > 0, 1.0 / (counts + 1.0), 0.0)
    share = n * w / w.sum()
    quota = np.floor(share).astype(np.int64)
    rest = n - int(quota.sum())
    if rest:
        order = np.lexsort((gen.permutation(C), -(share - quota)))
        quota[order[:rest]] += 1
    quota = np.minimum(quota, avail)
    order = _best_first(u, gen)
    taken = np.zeros(N, dtype=bool)
    picked: list[np.ndarray] = []
    for c in range(C):
        if quota[c]:
            mine = order[p[order] == c][: quota[c]]
            taken[mine] = True
            picked.append(mine)
    spill = n - int(quota.sum())
    if spill:
        picked.append(order[~taken[order]][:spill])
    return np.concatenate(picked).astype(np.int64)


def power_batch(
    utility: Any,
    n: int,
    T: float = 1.0,
    rng: np.random.Generator | int | None = None,
    *,
    transform: Literal["rank", "min"] = "rank",
) -> np.ndarray:
    """Stochastic power acquisition (Kirsch et al. 2023): draw ``n`` without replacement with

    .. math:: P(i) \\propto s_i^{1/T}

    from the samples not drawn yet, where the positive score :math:`s_i` comes from the
    utility :math:`u_i` by

    - ``transform="rank"`` (their *softrank*): :math:`s_i = 1/\\operatorname{rank}(i)`, rank 1
      the highest utility (ties get distinct ranks in random order), so
      :math:`P(i) \\propto \\operatorname{rank}(i)^{-1/T}` whatever the utility's scale;
    - ``transform="min"`` (their *power*): :math:`s_i = u_i - \\min_j u_j + \\delta` with
      :math:`\\delta = 10^{-3}(\\max_j u_j - \\min_j u_j)` (1 when all are equal), so the
      lowest utility keeps a small, non-zero probability.

    Sampling uses the Gumbel-top-k trick: the ``n`` largest :math:`\\log s_i / T + g_i` with
    :math:`g_i` i.i.d. standard Gumbel, which is exactly sequential sampling without
    replacement. ``T -> 0`` tends to top-n; ``T = 1`` is Kirsch et al.'s setting.

    Args:
        utility: ``(N,)`` scores, higher = query first.
        n: batch size, ``1 <= n <= N``.
        T: temperature ``> 0``.
        rng: Generator or seed (``None``: seed 0).
        transform: ``"rank"`` or ``"min"``, see above.

    Returns:
        ``(n,)`` int64 positions in draw order.

    Raises:
        ValueError: ``T <= 0``, an unknown ``transform``, NaN utilities, ``n`` out of range.
    """
    u = check_utility(utility)
    n = check_n(n, len(u))
    if not (isinstance(T, int | float) and T > 0 and np.isfinite(T)):
        raise ValueError(f"T must be a finite number > 0, got {T!r}")
    gen = _rng(rng)
    if transform == "rank":
        rank = np.empty(len(u))
        rank[_best_first(u, gen)] = np.arange(1, len(u) + 1)
        log_s = -np.log(rank)
    elif transform == "min":
        span = float(u.max() - u.min())
        log_s = np.log(u - u.min() + (1e-3 * span if span > 0 else 1.0))
    else:
        raise ValueError(f"transform must be 'rank' or 'min', got {transform!r}")
    keys = log_s / T + gen.gumbel(size=len(u))
    return np.argsort(-keys, kind="stable")[:n].astype(np.int64)


def ranked_batch(
    utility: Any,
    features: Any,
    n: int,
    *,
    alpha: float | None = None,
    labelled_features: Any = None,
    metric: Any = "euclidean",
) -> np.ndarray:
    """Ranked batch-mode sampling (Cardoso et al. 2017; modAL's ``ranked_batch``).

    The utility is scaled to :math:`\\tilde u_i = (u_i - \\min u)/(\\max u - \\min u) \\in
    [0, 1]` (all 1 when constant). Samples are picked one at a time, each maximising

    .. math:: s_i = \\alpha\\,\\big(1 - \\mathrm{sim}_i\\big) + (1 - \\alpha)\\,\\tilde u_i,
        \\qquad \\mathrm{sim}_i = \\frac{1}{1 + \\min_{x' \\in L} d(x_i, x')}

    where ``L`` is the labelled set plus the samples picked so far and ``d`` the ``metric``
    on flattened features. With ``alpha=None``, :math:`\\alpha = |U| / (|U| + |L|)` with ``U``
    the samples still unpicked, as in modAL. While ``L`` is empty the first pick is the
    highest utility. For RPR, :math:`u = -\\mathrm{RPR}` and :math:`\\tilde u` is the RPR's
    min-max-scaled complement.

    Args:
        utility: ``(N,)`` scores, higher = query first.
        features: ``(N, ...)`` one feature vector per sample (flattened).
        n: batch size, ``1 <= n <= N``.
        alpha: weight of dissimilarity in ``[0, 1]``, or ``None`` (modAL's schedule).
        labelled_features: ``(M, ...)`` features of the labelled set, or ``None``.
        metric: a ``sklearn.metrics.pairwise_distances`` metric when not ``"euclidean"``.

    Returns:
        ``(n,)`` int64 positions in picking order.

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``, features of the wrong length, NaN utility.
        ImportError: a non-euclidean metric without scikit-learn.
    """
    u = check_utility(utility)
    N = len(u)
    n = check_n(n, N)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 0 or f.shape[0] != N:
        raise ValueError(f"features must have one row per sample ({N}), got shape {f.shape}")
    f = f.reshape(N, -1)
    span = float(u.max() - u.min())
    ut = (u - u.min()) / span if span > 0 else np.ones(N)
    nearest = np.full(N, np.inf)
    n_lab = 0
    if labelled_features is not None and len(labelled_features) > 0:
        ref = np.asarray(labelled_features, dtype=np.float64).reshape(len(labelled_features), -1)
        if ref.shape[1] != f.shape[1]:
            raise ValueError(
                f"labelled_features must have {f.shape[1]} values per row, got {ref.shape[1]}"
            )
        nearest = _nearest(f, ref, metric)
        n_lab = len(ref)
    picked: list[int] = []
    free = np.ones(N, dtype=bool)
    for _ in range(n):
        if n_lab + len(picked) == 0:
            i = int(np.argmax(ut))
        else:
            n_free = int(free.sum())
            a = alpha if alpha is not None else n_free / (n_free + n_lab + len(picked))
            s = a * (1.0 - 1.0 / (1.0 + nearest)) + (1.0 - a) * ut
            s[~free] = -np.inf
            i = int(np.argmax(s))
        picked.append(i)
        free[i] = False
        nearest = np.minimum(nearest, _nearest(f, f[i : i + 1], metric))
    return np.asarray(picked, dtype=np.int64)


def _nearest(X: np.ndarray, ref: np.ndarray, metric: Any, chunk: int = 4096) -> np.ndarray:
    """Distance of each row of ``X`` to its nearest row of ``ref``."""
    out = np.empty(X.shape[0])
    if metric == "euclidean":
        rr = (ref * ref).sum(1)
        for i in range(0, X.shape[0], chunk):
            x = X[i : i + chunk]
            d2 = (x * x).sum(1)[:, None] - 2.0 * x @ ref.T + rr[None, :]
            out[i : i + chunk] = np.sqrt(np.maximum(d2, 0.0).min(1))
        return out
    try:
        from sklearn.metrics import pairwise_distances
    except ImportError as err:
        raise ImportError(
            "a non-euclidean metric needs scikit-learn: pip install 'rprselect[modal]'"
        ) from err
    for i in range(0, X.shape[0], chunk):
        out[i : i + chunk] = pairwise_distances(X[i : i + chunk], ref, metric=metric).min(1)
    return out
