"""RPR as a modAL query strategy.

modAL calls a query strategy as ``strategy(learner, X_pool, **kwargs)`` and, since modAL 0.4.2,
expects ``(indices, scores)`` back (``BaseLearner.query`` returns ``(indices, X_pool[indices])``
to the user). Both strategies here follow that contract, so they plug into ``ActiveLearner`` and
``DeepActiveLearner`` as ``query_strategy=``, and can also be called on their own.

The torch module is found inside whatever is passed as the classifier: a modAL learner
(``.estimator``), a skorch ``NeuralNet`` (``.module_``, once initialised) or a bare
``torch.nn.Module``. Nothing here imports modAL or skorch: they are recognised by these
attributes. :func:`rpr_batch_sampling` needs scikit-learn (``pip install 'rprselect[modal]'``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rprselect.batches import ranked_batch
from rprselect.registry import Labelled
from rprselect.scoring import score
from rprselect.select import DEFAULT_STRATEGY, select
from rprselect.table import ScoreTable

__all__ = ["rpr_sampling", "rpr_batch_sampling", "find_module", "pool_tensor"]

_EXTRA = "pip install 'rprselect[modal]'"


def find_module(classifier: Any) -> nn.Module:
    """The ``torch.nn.Module`` inside a modAL learner, a skorch net, or the module itself.

    Args:
        classifier: an ``ActiveLearner``/``DeepActiveLearner`` (anything with ``.estimator``),
            a skorch ``NeuralNet`` (``.module_``), or an ``nn.Module``.

    Raises:
        ValueError: a skorch net that is not initialised yet (fit it or call ``initialize()``).
        TypeError: no torch module inside.
    """
    obj = classifier
    for _ in range(8):  # learner -> estimator -> (pipeline step) -> module_
        if isinstance(obj, nn.Module):
            return obj
        module = getattr(obj, "module_", None)
        if isinstance(module, nn.Module):
            return module
        if hasattr(obj, "module") and hasattr(obj, "initialize"):  # a skorch net, not ready
            raise ValueError(
                f"classifier holds a skorch {type(obj).__name__} that is not initialised: "
                "fit it or call .initialize() first"
            )
        if not hasattr(obj, "estimator"):
            break
        obj = obj.estimator
    raise TypeError(
        "classifier must be a torch.nn.Module, a skorch NeuralNet or a modAL learner wrapping "
        f"one, got {type(classifier).__name__}"
    )


def _first_conv(module: nn.Module) -> nn.Module | None:
    return next(
        (m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None
    )


def pool_tensor(module: nn.Module, X: Any, input_shape: tuple[int, ...] | None = None) -> Tensor:
    """X as a ``(N, C, *spatial)`` tensor in the module's dtype.

    Rows of a flat ``(N, D)`` array are reshaped to ``input_shape`` when given, else to
    ``(C, s, s)`` (``(C, s, s, s)``) when the module's first convolution is 2-D (3-D) with
    ``C`` input channels and ``D / C`` is a square (cube): 64 features become ``(1, 8, 8)`` for
    scikit-learn's digits. Other shapes are used as given.

    Raises:
        TypeError: X is not an array or tensor.
        ValueError: ``input_shape`` does not hold a row of X.
    """
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if not isinstance(X, Tensor):
        raise TypeError(f"X must be a numpy array or a torch tensor, got {type(X).__name__}")
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    X = X.to(param.dtype if param is not None else torch.float32)
    if input_shape is not None:
        if math.prod(input_shape) != math.prod(X.shape[1:]):
            raise ValueError(
                f"input_shape must hold one row of X ({math.prod(X.shape[1:])} values), got "
                f"{tuple(input_shape)}"
            )
        return X.reshape(X.shape[0], *input_shape)
    conv = _first_conv(module)
    if X.dim() == 2 and conv is not None:
        dims = 1 if isinstance(conv, nn.Conv1d) else 2 if isinstance(conv, nn.Conv2d) else 3
        c = int(conv.in_channels)  # type: ignore[arg-type]
        side = round((X.shape[1] / c) ** (1 / dims))
        if c * side**dims == X.shape[1]:
            return X.reshape(X.shape[0], c, *(side,) * dims)
    return X


def _score(
    classifier: Any, X: Any, n_instances: int, k: int | None, kw: dict[str, Any]
) -> tuple[Tensor, ScoreTable]:
    """The pool as a tensor and its scores, after checking ``n_instances`` against it."""
    module = find_module(classifier)
    pool = pool_tensor(module, X, kw.pop("input_shape", None))
    if isinstance(n_instances, bool) or not isinstance(n_instances, int | np.integer):
        raise TypeError(f"n_instances must be an int, got {type(n_instances).__name__}")
    if not 1 <= n_instances <= len(pool):
        raise ValueError(
            f"n_instances must satisfy 1 <= n_instances <= {len(pool)} (the pool size), "
            f"got {n_instances}"
        )
    kw.setdefault("progress", False)
    return pool, score(module, pool, k=k, **kw)


def rpr_sampling(
    classifier: Any, X: Any, n_instances: int = 1, k: int | None = None, **kw: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Query ``n_instances`` samples of X by :data:`rprselect.select.DEFAULT_STRATEGY` (the
    strategy the recorded rule of docs/acquisition.md chose), or by ``strategy=``: e.g. the
    paper's ``"lowest"``, the lowest RPR (Eq. 10) first,

    .. math:: \\mathrm{RPR}(x; k) = \\frac{\\|V_k V_k^T x\\|_2^2}{\\|x\\|_2^2}

    A low RPR means x lies near the nullspace of A[x], where the network is likely to fail.
    Stratified strategies count the learner's ``y_training`` per class.

    Example:
        ``ActiveLearner(estimator=net, query_strategy=rpr_sampling, X_training=X0,
        y_training=y0)`` then ``idx, x = learner.query(X_pool, n_instances=10)``.

    Args:
        classifier: a modAL learner, a skorch net or an ``nn.Module`` (see :func:`find_module`).
        X: the pool, a numpy array or tensor ``(N, C, *spatial)``, or flat ``(N, D)`` rows
            (see :func:`pool_tensor`).
        n_instances: how many to query, ``1 <= n_instances <= N``.
        k: singular triplets per sample; ``None`` takes ``min(10, number of classes)``
            (2 for a binary classifier), see :class:`~rprselect.ScoreSettings`.
        **kw: ``strategy`` (any name :func:`~rprselect.select.select` takes), ``input_shape``
            (see :func:`pool_tensor`), ``rng`` (tie breaking, see
            :func:`~rprselect.select.select`), and any keyword of
            :func:`~rprselect.scoring.score` (``tol``, ``solver``, ``batch_size``,
            ``device``, ``method``, ``config``; ``progress`` defaults to ``False`` here).

    Returns:
        ``(indices, scores)``: positions in X in picking order and their RPR at rank k, both
        ``(n_instances,)`` (the modAL 0.4.2 strategy contract).

    Raises:
        ValueError: ``n_instances`` out of range, bad scoring settings or samples.
        TypeError: a classifier without a torch module, X of the wrong type, or a
            non-integer ``n_instances``.
    """
    rng = kw.pop("rng", None)
    strategy = kw.pop("strategy", DEFAULT_STRATEGY)
    _, table = _score(classifier, X, n_instances, k, kw)
    y = getattr(classifier, "y_training", None)
    labelled = Labelled(y=np.asarray(y, dtype=np.int64)) if y is not None and len(y) else None
    chosen = select(table, n_instances, strategy, rng=rng, labelled=labelled)
    return chosen.indices, chosen.scores


def rpr_batch_sampling(
    classifier: Any,
    X: Any,
    n_instances: int = 20,
    k: int | None = None,
    alpha: float | None = None,
    metric: Any = "euclidean",
    **kw: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranked batch-mode sampling (Cardoso et al. 2017, modAL's ``ranked_batch``) with RPR.

    The one implementation, :func:`rprselect.batches.ranked_batch` (also behind
    ``select(strategy="diverse")``), with utility :math:`-\\mathrm{RPR}(x; k)` scaled to
    :math:`\\tilde u(x) \\in [0, 1]` (min-max over the pool, 1 = lowest RPR). Samples are
    picked one at a time, each maximising

    .. math:: s(x) = \\alpha\\,\\big(1 - \\mathrm{sim}(x)\\big)
        + (1 - \\alpha)\\,\\tilde u(x),
        \\qquad \\mathrm{sim}(x) = \\frac{1}{1 + \\min_{x' \\in L} d(x, x')}

    where ``L`` is the labelled set (the learner's ``X_training``) plus the samples picked so
    far, and ``d`` the ``metric`` on flattened samples. With ``alpha=None`` it is
    ``|U| / (|U| + |L|)`` with ``U`` the pool still unpicked, as in modAL. A
    ``DeepActiveLearner`` keeps no ``X_training``: then ``L`` starts empty and the first pick
    is the lowest RPR (where modAL's ``ranked_batch`` takes the most central sample).

    Args:
        classifier: a modAL learner, a skorch net or an ``nn.Module``.
        X: the pool, as in :func:`rpr_sampling`.
        n_instances: how many to query (at most N).
        k: singular triplets per sample; ``None`` adapts to the model as in
            :func:`rpr_sampling`.
        alpha: weight of dissimilarity against uncertainty in ``[0, 1]``, or ``None``.
        metric: any ``sklearn.metrics.pairwise_distances`` metric.
        **kw: as in :func:`rpr_sampling` (except ``rng``).

    Returns:
        ``(indices, scores)``: positions in X in picking order, and their RPR at rank k.

    Raises:
        ImportError: scikit-learn is missing.
        ValueError: ``n_instances`` or ``alpha`` out of range.
    """
    try:
        import sklearn.metrics  # noqa: F401
    except ImportError as err:
        raise ImportError(f"rpr_batch_sampling needs scikit-learn: {_EXTRA}") from err
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
    pool, table = _score(classifier, X, n_instances, k, kw)
    N = len(table)
    rpr = np.empty(N)
    rpr[table.index] = table.rpr
    feats = pool.detach().cpu().double().numpy().reshape(N, -1)
    labelled = getattr(classifier, "X_training", None)
    ref = None
    if labelled is not None and len(labelled) > 0:
        ref = np.asarray(labelled, dtype=np.float64).reshape(len(labelled), -1)
    idx = ranked_batch(-rpr, feats, n_instances, alpha=alpha, labelled_features=ref, metric=metric)
    return idx, rpr[idx]
