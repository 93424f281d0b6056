"""Baselines of the active-learning benchmark that need more than per-sample scores.

- :func:`bald_scores`: MC-dropout BALD (Gal et al. 2017).
- :func:`badge_sampling`: k-means++ seeding on last-layer gradient embeddings (Ash et al. 2020).
- :func:`k_center_greedy`: core-set's greedy k-center (Sener & Savarese 2018).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["penultimate_features", "bald_scores", "badge_sampling", "k_center_greedy"]

_BATCH = 512


def _last_linear(module: nn.Module) -> nn.Linear:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"module must contain an nn.Linear, got {type(module).__name__}")
    return linears[-1]


def penultimate_features(module: nn.Module, X: np.ndarray) -> torch.Tensor:
    """Input of the last ``nn.Linear``, ``(N, d)``, in eval mode."""
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach())

    handle = _last_linear(module).register_forward_pre_hook(hook)
    module.eval()
    xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    try:
        with torch.no_grad():
            for i in range(0, len(xt), _BATCH):
                module(xt[i : i + _BATCH])
    finally:
        handle.remove()
    if not captured:
        return torch.empty(0, _last_linear(module).in_features)
    return torch.cat(captured).flatten(1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def bald_scores(module: nn.Module, X: np.ndarray, mc_samples: int = 20) -> np.ndarray:
    """Mutual information between the label and the weights, by MC dropout.

    .. math:: I(y; \\theta \\mid x) \\approx H\\Big[\\tfrac1T \\sum_t p_t\\Big]
        - \\tfrac1T \\sum_t H[p_t]

    The dropout modules are active for the ``T = mc_samples`` passes (the network must have
    some); the rest of the network is in eval mode.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    module.eval()
    drops = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    for m in drops:
        m.train()
    try:
        with torch.no_grad():
            probs = torch.stack(
                [
                    torch.cat(
                        [
                            F.softmax(module(xt[i : i + _BATCH]).double(), -1)
                            for i in range(0, len(xt), _BATCH)
                        ]
                    )
                    for _ in range(mc_samples)
                ]
            )
    finally:
        module.eval()
    return (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).numpy()


def badge_sampling(
    module: nn.Module, X: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """BADGE: k-means++ seeding on the gradient of the loss at the predicted label with respect
    to the last layer's weights,

    .. math:: g(x) = \\big(p(x) - e_{\\hat y(x)}\\big) \\otimes h(x),

    with :math:`h` the penultimate features. The first pick has the largest
    :math:`\\|g\\|`; each next one is drawn with probability proportional to the squared distance
    to the nearest pick (Arthur & Vassilvitskii 2007), as in Ash et al.'s code.
    """
    h = penultimate_features(module, X).double()
    module.eval()
    with torch.no_grad():
        p = F.softmax(_last_linear(module)(h.float()).double(), -1)
    p[torch.arange(len(p)), p.argmax(1)] -= 1.0
    g = (p[:, :, None] * h[:, None, :]).flatten(1).numpy()
    sq = (g * g).sum(1)
    first = int(np.argmax(sq))
    picked = [first]
    d2 = np.maximum(sq - 2 * g @ g[first] + sq[first], 0.0)
    for _ in range(n - 1):
        d2[picked] = 0.0
        total = d2.sum()
        if total <= 0:  # every remaining point coincides with a pick: take any unpicked one
            free = np.setdiff1d(np.arange(len(g)), picked)
            i = int(rng.choice(free))
        else:
            i = int(rng.choice(len(g), p=d2 / total))
        picked.append(i)
        d2 = np.minimum(d2, np.maximum(sq - 2 * g @ g[i] + sq[i], 0.0))
    return np.asarray(picked, dtype=np.int64)


def k_center_greedy(
    pool: torch.Tensor, centres: torch.Tensor, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: repeatedly take the point farthest from the centres.

    .. math:: i_t = \\arg\\max_{i} \\min_{c \\in C_{t-1}} \\|f_i - f_c\\|_2,\\quad
        C_t = C_{t-1} \\cup \\{i_t\\}

    Args:
        pool: ``(N, d)`` features of the candidates.
        centres: ``(M, d)`` features of the labelled samples (``M`` may be 0).
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
