"""Choose what to annotate next from a :class:`~rprselect.scoring.ScoreTable`.

Selectors are small pure functions of the scores (and, for diversity, of a feature per
sample). Any acquisition of :mod:`rprselect.acquisition` can be named as the strategy; the
default, :data:`DEFAULT_STRATEGY`, is the one the recorded rule of docs/acquisition.md chose on
digits and MNIST. A low RPR means the sample lies near the nullspace of A[x], where the model
is likely to fail (paper Section 1.2), and the paper's two rules favour low RPR:

- ``"lowest"``: the ``n`` samples with the lowest RPR at rank k.
- ``"diverse"``: ranked batch selection (Cardoso et al. 2017, as in modAL's ``ranked_batch``)
  restricted to the ``candidates * n`` lowest-RPR samples, by
  :func:`rprselect.batches.ranked_batch` (the same function as
  ``rprselect.integrations.modal.rpr_batch_sampling``). It starts from the lowest RPR, then
  greedily adds the candidate maximising

  .. math:: s_i = \\alpha\\,(1 - \\rho_i) + (1 - \\alpha)\\,\\Big(1 - \\frac{1}{1 + d_i}\\Big)

  where :math:`\\rho_i \\in [0, 1]` is the candidate's RPR rank among the candidates
  (0 = lowest RPR) and :math:`d_i` its Euclidean distance to the nearest sample already picked,
  in a feature space: the given ``features`` (e.g. the pool flattened, or embeddings), else
  each sample's RPR curve (ranks 1..k), standardised per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .batches import ranked_batch
from .scoring import ScoreTable, score

__all__ = ["Selection", "select", "RPRSelector", "DEFAULT_STRATEGY", "PAPER_STRATEGY"]

#: ``"lowest"``, ``"diverse"``, or a name of :data:`rprselect.acquisition.ACQUISITIONS` or
#: :data:`rprselect.registry.PRESETS`.
Strategy = str

#: The default strategy, chosen by the recorded rule of docs/acquisition.md on digits and
#: MNIST (README, "Which acquisition to use"): margin sampling, the smallest softmax margin
#: first. It needs no SVD: on these data no RPR variant beat it (docs/al_results/rule.md).
DEFAULT_STRATEGY: str = "margin"
#: The paper's rule: lowest RPR at rank k first (Section 1.2), always available by this name.
PAPER_STRATEGY: str = "lowest"


@dataclass
class Selection:
    """Samples proposed for labelling, in the order they were picked.

    Attributes:
        indices: positions in the pool (``ScoreTable.index``), ``(n,)`` int64.
        ids: their ids.
        scores: their RPR at rank k, ``(n,)``.
        utility: the acquisition utility each was chosen by (higher = first), for strategies
            other than ``"lowest"`` and ``"diverse"``; else ``None``.
        strategy: the strategy that chose them.
    """

    indices: np.ndarray
    ids: list[str]
    scores: np.ndarray
    utility: np.ndarray | None = None
    strategy: str = PAPER_STRATEGY

    def __len__(self) -> int:
        return len(self.ids)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator | None:
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool) or not isinstance(rng, int):
        raise TypeError(
            f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}"
        )
    return np.random.default_rng(rng)


def _order(values: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Ascending order; ties broken at random with ``rng``, else by position."""
    if rng is None:
        return np.argsort(values, kind="stable")
    return np.lexsort((rng.permutation(len(values)), values))


def _features(table: ScoreTable, features: Any) -> np.ndarray:
    if features is None:
        f = table.rpr_curve.astype(np.float64)
        std = f.std(0)
        return (f - f.mean(0)) / np.where(std > 0, std, 1.0)
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().cpu().numpy()
    f = np.asarray(features, dtype=np.float64)
    if f.ndim == 0 or f.shape[0] != len(table):
        raise ValueError(
            f"features must have one row per scored sample ({len(table)}), got shape {f.shape}"
        )
    return f.reshape(len(table), -1)


def select(
    scores: ScoreTable,
    n: int,
    strategy: Strategy = DEFAULT_STRATEGY,
    rng: np.random.Generator | int | None = None,
    features: Any = None,
    *,
    alpha: float = 0.5,
    candidates: float = 3.0,
    logits: Any = None,
    labelled: Any = None,
    **params: Any,
) -> Selection:
    """Propose ``n`` samples to label (see the module docstring for the strategies).

    Args:
        scores: the table from :func:`~rprselect.score` (or :meth:`ScoreTable.from_csv`).
        n: how many to propose, ``1 <= n <= len(scores)``.
        strategy: ``"lowest"`` (the paper's rule), ``"diverse"``, or any name of
            :data:`rprselect.acquisition.ACQUISITIONS` or :data:`rprselect.registry.PRESETS`
            (default :data:`DEFAULT_STRATEGY`), computed by
            :func:`rprselect.acquisition.acquire`. A strategy that needs the model's outputs
            reads ``logits`` (default ``scores.logits``); when neither is there (a
            segmentation model, or a CSV without logits) the paper's ``"lowest"`` is used.
        rng: breaks ties in RPR at random (a Generator or seed); ``None`` keeps pool order.
        features: for ``"diverse"``, one feature vector per row of ``scores``
            (``(N, ...)``, flattened); default the standardised RPR curves.
        alpha: weight of the RPR rank against the distance, in ``[0, 1]`` (``"diverse"``).
        candidates: ``"diverse"`` picks among the ``ceil(candidates * n)`` lowest RPRs.
        logits: ``(N, C)`` model outputs on the rows of ``scores`` (default ``scores.logits``).
        labelled: a :class:`rprselect.acquisition.Labelled` with the labelled set's labels (for
            stratified batches; without it every class counts as unlabelled) and RPR curves
            (for ``class_conditional``).
        **params: the acquisition's own parameters (``gamma``, ``r``, ``T``, ...).

    Returns:
        A :class:`Selection`, in picking order (ascending RPR for ``"lowest"``).

    Raises:
        ValueError: ``n`` outside ``[1, len(scores)]``, an unknown strategy, bad ``alpha``,
            ``candidates < 1``, features of the wrong length, or a NaN/infinite RPR or a
            repeated id in ``scores`` (:meth:`ScoreTable.check_rankable`).
        TypeError: ``scores`` is not a ScoreTable or ``n`` is not an int.
    """
    if not isinstance(scores, ScoreTable):
        raise TypeError(f"scores must be a ScoreTable, got {type(scores).__name__}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    N = len(scores)
    if not 1 <= n <= N:
        raise ValueError(f"n must satisfy 1 <= n <= pool size = {N}, got {n}")
    scores.check_rankable()  # NaN/inf RPR or repeated ids: a clear ValueError naming them
    if strategy not in ("lowest", "diverse"):
        from .registry import preset_of

        preset_of(strategy)  # ValueError listing every known name
        if logits is None and getattr(scores, "logits", None) is None:
            if "logits" in _needs(strategy):
                strategy = PAPER_STRATEGY  # no model outputs kept: the paper's rule
    if strategy not in ("lowest", "diverse"):
        return _by_acquisition(scores, n, strategy, rng, logits, labelled, params)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not candidates >= 1.0:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    gen = _rng(rng)
    order = _order(scores.rpr, gen)
    if strategy == "lowest":
        chosen = order[:n]
    else:
        feats = _features(scores, features)
        pool = order[: min(N, math.ceil(candidates * n))]
        chosen = pool[_ranked_batch(feats[pool], n, alpha)]
    chosen = np.asarray(chosen, dtype=np.int64)
    return Selection(
        indices=scores.index[chosen].astype(np.int64),
        ids=[scores.ids[i] for i in chosen],
        scores=scores.rpr[chosen].copy(),
    )


def _needs(strategy: str) -> tuple[str, ...]:
    from .registry import ACQUISITIONS, preset_of

    return ACQUISITIONS[preset_of(strategy).acquisition].needs


def _by_acquisition(
    scores: ScoreTable,
    n: int,
    strategy: str,
    rng: np.random.Generator | int | None,
    logits: Any,
    labelled: Any,
    params: dict[str, Any],
) -> Selection:
    """Any acquisition of the registry, through :func:`rprselect.acquisition.acquire`."""
    from .registry import acquire, utility_of

    gen = _rng(rng)
    gen = gen if gen is not None else np.random.default_rng(0)
    state = gen.bit_generator.state
    chosen = acquire(strategy, scores, n, logits=logits, labelled=labelled, rng=gen, **params)
    gen.bit_generator.state = state  # the same draws again: the utility the batch was built on
    util = _utility(scores, strategy, logits, labelled, gen, params, utility_of)
    return Selection(
        indices=scores.index[chosen].astype(np.int64),
        ids=[scores.ids[i] for i in chosen],
        scores=scores.rpr[chosen].copy(),
        utility=util[chosen],
        strategy=strategy,
    )


def _utility(
    scores: ScoreTable,
    strategy: str,
    logits: Any,
    labelled: Any,
    gen: np.random.Generator,
    params: dict[str, Any],
    utility_of: Any,
) -> np.ndarray:
    from .registry import preset_of

    pre = preset_of(strategy)
    kw = {**dict(pre.params), **{k: v for k, v in params.items() if k not in ("T", "transform")}}
    kw.pop("batch", None)
    return np.asarray(
        utility_of(pre.acquisition, scores, logits=logits, labelled=labelled, rng=gen, params=kw)
    )


def _ranked_batch(feats: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Ranked batch over candidates already sorted by ascending RPR: the one implementation,
    :func:`rprselect.batches.ranked_batch`, with the RPR rank as utility and ``1 - alpha`` as
    the weight of dissimilarity."""
    utility = -np.arange(feats.shape[0], dtype=np.float64)  # 0 = lowest RPR = best
    return ranked_batch(utility, feats, n, alpha=1.0 - alpha)


class RPRSelector:
    """Score a pool and propose what to label, scikit-learn style.

    Args:
        k: singular triplets per sample.
        n: how many samples to propose.
        strategy: the default :data:`DEFAULT_STRATEGY`, the paper's ``"lowest"``,
            ``"diverse"`` or any acquisition name (see :func:`select`).
        rng: tie-breaking seed or Generator.
        **score_kwargs: passed to :func:`~rprselect.score` (``tol``, ``solver``,
            ``batch_size``, ``device``, ``cache``, ``progress``, ...).

    Attributes:
        scores_: the :class:`ScoreTable` of the last pool.
        selection_: the last :class:`Selection`.

    Example:
        >>> import torch
        >>> from rprselect.models import MNISTNet
        >>> selector = RPRSelector(k=3, n=2, progress=False)
        >>> sel = selector.select(MNISTNet(in_size=8), torch.rand(5, 1, 8, 8))
        >>> len(sel), len(selector.scores_)
        (2, 5)
    """

    def __init__(
        self,
        *,
        k: int = 10,
        n: int = 10,
        strategy: Strategy = DEFAULT_STRATEGY,
        rng: np.random.Generator | int | None = None,
        **score_kwargs: Any,
    ) -> None:
        self.k = k
        self.n = n
        self.strategy = strategy
        self.rng = rng
        self.score_kwargs = score_kwargs

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "k": self.k,
            "n": self.n,
            "strategy": self.strategy,
            "rng": self.rng,
            **self.score_kwargs,
        }

    def set_params(self, **params: Any) -> RPRSelector:
        for name, value in params.items():
            if name in ("k", "n", "strategy", "rng"):
                setattr(self, name, value)
            else:
                self.score_kwargs[name] = value
        return self

    def select(
        self, model: Any, pool: Any, features: Any = None, labelled: Any = None
    ) -> Selection:
        """Score ``pool`` with ``model`` and propose ``n`` samples (``labelled``: see
        :func:`select`).

        With ``strategy="diverse"``, a tensor or array pool is its own feature space unless
        ``features`` is given.
        """
        self.scores_ = score(model, pool, k=self.k, **self.score_kwargs)
        if features is None and self.strategy == "diverse" and hasattr(pool, "shape"):
            features = np.asarray(pool)[self.scores_.index] if len(pool) else None
        self.selection_ = select(
            self.scores_, self.n, self.strategy, rng=self.rng, features=features, labelled=labelled
        )
        return self.selection_

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"RPRSelector({params})"
