"""Acquisition functions of the active-learning benchmark, as modAL query strategies.

Every strategy has modAL's signature ``strategy(classifier, X, n_instances=1, **kw)`` and returns
``(indices, scores)``: positions into ``X`` of the samples to label and the score each was chosen
by. ``classifier`` is a modAL ``ActiveLearner`` wrapping a skorch ``NeuralNetClassifier`` (or the
skorch net itself, or a bare ``nn.Module``); :func:`torch_module` finds the network inside.

The uncertainty baselines (least confidence, margin, entropy) are modAL's own functions and are
not repeated here. This module adds random sampling, MC-dropout BALD, core-set (greedy k-center)
and three RPR strategies:

- ``rpr_lowest``: the ``n`` samples of lowest :math:`\\mathrm{RPR}(x; k)` (paper Eq. 10).
- ``rpr_diverse``: the ``factor * n`` lowest-RPR samples are candidates, and greedy k-center on
  penultimate features picks ``n`` of them, starting from the labeled set as centres.
- ``rpr_entropy``: rank average of :math:`1 - \\mathrm{RPR}` and the predictive entropy, both
  ranked over the pool (ties averaged) and scaled to ``(0, 1]``; the ``n`` highest are taken.

RPR comes from ``rprselect.integrations.modal.rpr_sampling`` when that adapter is installed, else
from :func:`rprselect.svd_batch` (dense solver) and :func:`rprselect.rpr` directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import rpr
from ..solvers import svd_batch

__all__ = [
    "STRATEGIES",
    "query_strategy",
    "active_learner_class",
    "torch_module",
    "predict_logits",
    "penultimate_features",
    "k_center_greedy",
    "rpr_scores",
    "rpr_source",
    "random_sampling",
    "bald_sampling",
    "coreset_sampling",
    "rpr_lowest_sampling",
    "rpr_diverse_sampling",
    "rpr_entropy_sampling",
]

#: Every strategy of the benchmark, in report order before ranking.
STRATEGIES: tuple[str, ...] = (
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "bald",
    "coreset",
    "rpr_lowest",
    "rpr_diverse",
    "rpr_entropy",
)

_INFER_BATCH = 512
_RPR_BATCH = 128
#: Scoring settings handed to the adapter: the same exact solver as the direct path.
_ADAPTER_KW: dict[str, Any] = {"solver": "dense", "batch_size": _RPR_BATCH}


def torch_module(classifier: Any) -> nn.Module:
    """The ``nn.Module`` inside a modAL learner, a skorch net, or the module itself.

    Raises:
        TypeError: if no module is found.
    """
    obj = getattr(classifier, "estimator", classifier)
    module = getattr(obj, "module_", obj)
    if not isinstance(module, nn.Module):
        raise TypeError(
            "classifier must be a modAL learner, a fitted skorch net or an nn.Module, "
            f"got {type(classifier).__name__}"
        )
    return module


def _as_tensor(X: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def predict_logits(module: nn.Module, X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Logits of ``X`` in eval mode, batched, without gradients."""
    module.eval()
    xt = _as_tensor(X)
    with torch.no_grad():
        return torch.cat(
            [module(xt[i : i + _INFER_BATCH]) for i in range(0, len(xt), _INFER_BATCH)]
        )


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"module must contain an nn.Linear, got {type(module).__name__}")
    return linears[-1]


def penultimate_features(module: nn.Module, X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Input of the last ``nn.Linear`` (256-d for ``MNISTNet``), shape ``(N, d)``."""
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach())

    handle = _last_linear(module).register_forward_pre_hook(hook)
    try:
        predict_logits(module, X)
    finally:
        handle.remove()
    return torch.cat(captured).flatten(1)


def k_center_greedy(
    pool: torch.Tensor, centres: torch.Tensor, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Sener & Savarese 2018): repeatedly take the point farthest from the centres.

    .. math:: i_t = \\arg\\max_{i} \\min_{c \\in C_{t-1}} \\|f_i - f_c\\|_2,\\quad
        C_t = C_{t-1} \\cup \\{i_t\\}

    Args:
        pool: ``(N, d)`` features of the candidates.
        centres: ``(M, d)`` features of the labeled samples (``M`` may be 0).
        n: number of points to pick, ``1 <= n <= N``.

    Returns:
        ``(indices, distances)``: positions into ``pool`` in pick order and the distance of each
        to its nearest centre when it was picked.
    """
    if not 1 <= n <= len(pool):
        raise ValueError(f"n must satisfy 1 <= n <= {len(pool)}, got {n}")
    pool = pool.double()
    if len(centres):
        mind = torch.full((len(pool),), float("inf"), dtype=torch.float64)
        for i in range(0, len(centres), 1024):
            mind = torch.minimum(
                mind, torch.cdist(pool, centres[i : i + 1024].double()).min(1).values
            )
    else:  # no centres yet: start from the point farthest from the mean
        mind = (pool - pool.mean(0)).norm(dim=1)
    picked, dists = [], []
    for _ in range(n):
        i = int(torch.argmax(mind))
        picked.append(i)
        dists.append(float(mind[i]))
        mind = torch.minimum(mind, (pool - pool[i]).norm(dim=1))
        mind[i] = -1.0
    return np.asarray(picked, dtype=np.int64), np.asarray(dists)


def _adapter() -> Callable[..., tuple[Any, Any]] | None:
    try:
        from rprselect.integrations.modal import rpr_sampling
    except ImportError:
        return None
    return rpr_sampling


def rpr_source() -> str:
    """Which code computes RPR here: the modAL adapter or ``svd_batch`` + ``rpr`` directly."""
    if _adapter() is not None:
        return "rprselect.integrations.modal.rpr_sampling"
    return "rprselect.svd_batch(solver='dense') + rprselect.rpr"


def _direct_rpr(module: nn.Module, X: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    module.eval()
    xt = _as_tensor(X)
    out = np.ones(len(xt))  # an all-zero image has nothing outside the range: RPR := 1
    nonzero = torch.nonzero(xt.flatten(1).abs().sum(1) > 0).flatten()
    for i in range(0, len(nonzero), _RPR_BATCH):
        idx = nonzero[i : i + _RPR_BATCH]
        result = svd_batch(module, xt[idx], k=k, solver="dense")
        out[idx.numpy()] = rpr(result, xt[idx])[:, -1].numpy()
    return out


def rpr_scores(classifier: Any, X: np.ndarray, k: int = 10) -> np.ndarray:
    """:math:`\\mathrm{RPR}(x; k)` of every sample of ``X``, ``(N,)`` float64 in ``[0, 1]``.

    Uses ``rprselect.integrations.modal.rpr_sampling`` asked for all ``N`` samples when the
    adapter is available (so the benchmark exercises it), else ``svd_batch`` + ``rpr``.
    """
    sampler = _adapter()
    if sampler is None:
        return _direct_rpr(torch_module(classifier), X, k)
    torch_module(classifier).eval()
    idx, scores = sampler(classifier, X, n_instances=len(X), k=k, **_ADAPTER_KW)
    out = np.full(len(X), np.nan)
    out[np.asarray(idx, dtype=np.int64)] = np.asarray(scores, dtype=np.float64)
    if np.isnan(out).any():
        raise RuntimeError("rpr_sampling did not return a score for every sample")
    return out


def random_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n_instances`` positions drawn uniformly without replacement; scores are all 0."""
    idx = rng.choice(len(X), size=n_instances, replace=False)
    return idx, np.zeros(n_instances)


def _mc_probabilities(module: nn.Module, X: np.ndarray, mc_samples: int) -> torch.Tensor:
    """``(T, N, C)`` softmax outputs with dropout on; MNISTNet runs its conv trunk only once."""
    xt = _as_tensor(X)
    module.eval()
    with torch.no_grad():
        if all(hasattr(module, n) for n in ("fc1", "fc2", "fc3", "drop1", "conv2", "pool2")):
            p = float(module.dropout)  # type: ignore[arg-type]
            hs = []
            for i in range(0, len(xt), _INFER_BATCH):
                h = module.pool1(module.relu1(module.conv1(xt[i : i + _INFER_BATCH])))  # type: ignore[operator]
                h = module.pool2(module.relu2(module.conv2(h)))  # type: ignore[operator]
                hs.append(module.relu3(module.fc1(torch.flatten(h, 1))))  # type: ignore[operator]
            h = torch.cat(hs)
            outs = []
            for _ in range(mc_samples):
                z = module.relu4(module.fc2(F.dropout(h, p, training=True)))  # type: ignore[operator]
                outs.append(F.softmax(module.fc3(F.dropout(z, p, training=True)), -1))  # type: ignore[operator]
            return torch.stack(outs)
        module.train()  # generic path: dropout modules active, T full passes
        try:
            return torch.stack(
                [
                    torch.cat(
                        [
                            F.softmax(module(xt[i : i + _INFER_BATCH]), -1)
                            for i in range(0, len(xt), _INFER_BATCH)
                        ]
                    )
                    for _ in range(mc_samples)
                ]
            )
        finally:
            module.eval()


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def bald_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1, *, mc_samples: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """MC-dropout BALD (Gal et al. 2017): the largest mutual information.

    .. math:: I(y; \\theta \\mid x) \\approx H\\Big[\\tfrac1T \\sum_t p_t\\Big]
        - \\tfrac1T \\sum_t H[p_t]

    The network must contain dropout; ``T = mc_samples`` stochastic passes.
    """
    probs = _mc_probabilities(torch_module(classifier), X, mc_samples)
    score = (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).numpy()
    idx = np.argsort(-score, kind="stable")[:n_instances]
    return idx, score[idx]


def coreset_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Core-set: greedy k-center on penultimate features, the labeled set as first centres."""
    module = torch_module(classifier)
    labeled = getattr(classifier, "X_training", None)
    centres = penultimate_features(module, labeled) if labeled is not None else torch.empty(0)
    return k_center_greedy(penultimate_features(module, X), centres, n_instances)


def rpr_lowest_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1, *, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_instances`` samples of lowest :math:`\\mathrm{RPR}(x; k)`, via the modAL adapter."""
    sampler = _adapter()
    if sampler is not None:
        torch_module(classifier).eval()
        idx, scores = sampler(classifier, X, n_instances=n_instances, k=k, **_ADAPTER_KW)
        return np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    score = rpr_scores(classifier, X, k)
    idx = np.argsort(score, kind="stable")[:n_instances]
    return idx, score[idx]


def rpr_diverse_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1, *, k: int = 10, factor: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center among the ``factor * n_instances`` lowest-RPR samples.

    Low RPR says where the model is blind; the k-center step stops the batch from being
    ``n_instances`` near-copies of one blind spot. Scores are the RPR of the picked samples.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    score = rpr_scores(classifier, X, k)
    cand = np.argsort(score, kind="stable")[: min(len(X), factor * n_instances)]
    module = torch_module(classifier)
    labeled = getattr(classifier, "X_training", None)
    centres = penultimate_features(module, labeled) if labeled is not None else torch.empty(0)
    pick, _ = k_center_greedy(penultimate_features(module, X[cand]), centres, n_instances)
    idx = cand[pick]
    return idx, score[idx]


def _unit_ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks of ``v`` (ties share their mean rank) scaled to ``(0, 1]``."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(v, method="average"), dtype=np.float64) / len(v)


def rpr_entropy_sampling(
    classifier: Any, X: np.ndarray, n_instances: int = 1, *, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid: the highest rank average of :math:`1-\\mathrm{RPR}` and predictive entropy.

    .. math:: s(x) = \\tfrac12\\big[\\operatorname{rank}(1 - \\mathrm{RPR}(x;k))
        + \\operatorname{rank}(H[p(y \\mid x)])\\big] / N

    Ranks make the two scores commensurable without tuning a weight.
    """
    r = rpr_scores(classifier, X, k)
    p = F.softmax(predict_logits(torch_module(classifier), X), -1)
    score = 0.5 * (_unit_ranks(1.0 - r) + _unit_ranks(_entropy(p).numpy()))
    idx = np.argsort(-score, kind="stable")[:n_instances]
    return idx, score[idx]


def query_strategy(
    name: str, *, seed: int, k: int = 10, mc_samples: int = 20, factor: int = 5
) -> Callable[..., tuple[Any, Any]]:
    """The modAL query strategy called ``name`` (one of :data:`STRATEGIES`), settings bound.

    Args:
        name: the strategy.
        seed: seed of ``random``'s generator.
        k: rank of the RPR.
        mc_samples: BALD's dropout passes.
        factor: ``rpr_diverse`` candidates per query.

    Raises:
        ValueError: if ``name`` is unknown.
        ImportError: if modAL is missing.
    """
    if name not in STRATEGIES:
        raise ValueError(f"name must be one of {STRATEGIES}, got {name!r}")
    try:
        from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
    except ImportError as exc:
        raise ImportError("modAL strategies need modAL: pip install rprselect[modal]") from exc
    table: dict[str, Callable[..., tuple[Any, Any]]] = {
        "random": functools.partial(random_sampling, rng=np.random.default_rng([seed, 2])),
        "least_confidence": uncertainty_sampling,
        "margin": margin_sampling,
        "entropy": entropy_sampling,
        "bald": functools.partial(bald_sampling, mc_samples=mc_samples),
        "coreset": coreset_sampling,
        "rpr_lowest": functools.partial(rpr_lowest_sampling, k=k),
        "rpr_diverse": functools.partial(rpr_diverse_sampling, k=k, factor=factor),
        "rpr_entropy": functools.partial(rpr_entropy_sampling, k=k),
    }
    return table[name]


def active_learner_class() -> type:
    """modAL's ``ActiveLearner``, with ``teach`` fixed for scikit-learn >= 1.6.

    modAL 0.4.2 passes ``force_all_finite`` to ``check_X_y``, which scikit-learn 1.6 renamed
    (TypeError on every ``teach``); the subclass appends the new samples itself.

    Raises:
        ImportError: if modAL is missing.
    """
    try:
        from modAL.models import ActiveLearner
    except ImportError as exc:
        raise ImportError("ActiveLearner needs modAL: pip install rprselect[modal]") from exc

    class _ActiveLearner(ActiveLearner):  # type: ignore[misc]
        def _add_training_data(self, X: np.ndarray, y: np.ndarray) -> None:
            known_x, known_y = getattr(self, "X_training"), getattr(self, "y_training")  # noqa: B009
            self.X_training = np.concatenate([known_x, X])
            self.y_training = np.concatenate([known_y, y])

    return _ActiveLearner
