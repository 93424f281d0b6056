"""Strategies of the active-learning benchmark: one round's pool in, ``n`` positions out.

A strategy sees a :class:`Round` (the trained model, the unlabelled candidates, the labelled
set, the batch size and a seeded generator) and returns positions into the candidates. Most are
a name of :data:`rprselect.acquisition.ACQUISITIONS` with parameters and a batch mode
(:class:`Spec`); the rest need more than per-sample scores:

- ``bald``: MC-dropout BALD (Gal et al. 2017) on a network trained with dropout.
- ``badge``: k-means++ seeding on last-layer gradient embeddings (Ash et al. 2020).
- ``coreset``: greedy k-center on penultimate features (Sener & Savarese 2018).
- ``rpr_kcenter``: greedy k-center among the ``factor * n`` lowest-RPR candidates.

RPR curves come from :func:`exact_rpr_curves` (the C rows of A[x] by the public
:class:`rprselect.engine.Engine`, the dense solver), computed once per round and shared by
every variant; the acquisition functions take them as the ``(N, k)`` curve array that a
:class:`~rprselect.ScoreTable` holds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import acquisition as acq
from ..engine import Engine
from ..registry import PRESETS, Preset
from ..settings import ScoreSettings
from .al_baselines import badge_sampling, bald_scores, k_center_greedy, penultimate_features

__all__ = [
    "Spec",
    "Round",
    "STRATEGIES",
    "PILOT",
    "FINAL",
    "FINAL_MNIST",
    "GROUPS",
    "eligible",
    "group_of",
    "predict_logits",
    "query",
]

_INFER_BATCH = 512
_RPR_BATCH = 256


def predict_logits(module: nn.Module, X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Logits of ``X`` in eval mode, batched, without gradients."""
    module.eval()
    xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    with torch.no_grad():
        return torch.cat(
            [module(xt[i : i + _INFER_BATCH]) for i in range(0, len(xt), _INFER_BATCH)]
        )


@dataclass
class Round:
    """What a strategy may look at in one round (lazily computed columns are cached).

    Attributes:
        model: the network trained on the labelled set (``bald`` gets its dropout twin).
        x: ``(N, C, H, W)`` float32 unlabelled candidates.
        lab_x, lab_y: the labelled set.
        n: batch size.
        rng: the round's generator.
        k: rank of the RPR curve (ranks 1..k).
        n_classes: number of classes.
        params: strategy knobs (``mc_samples``, ``factor``).
    """

    model: nn.Module
    x: np.ndarray
    lab_x: np.ndarray
    lab_y: np.ndarray
    n: int
    rng: np.random.Generator
    k: int
    n_classes: int
    params: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    svd_seconds: float = 0.0

    def _get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def logits(self) -> np.ndarray:
        return self._get("logits", lambda: predict_logits(self.model, self.x).double().numpy())

    def x_norm(self) -> np.ndarray:
        return self._get("x_norm", lambda: _norms(self.x))

    def curve(self) -> np.ndarray:
        """``(N, k)`` RPR curves of the candidates."""
        return self._get("curve", lambda: self._rpr(self.x))

    def labelled(self) -> acq.Labelled:
        def make() -> acq.Labelled:
            return acq.Labelled(
                y=self.lab_y,
                rpr_curve=self._rpr(self.lab_x),
                logits=predict_logits(self.model, self.lab_x).double().numpy(),
                x_norm=_norms(self.lab_x),
            )

        return self._get("labelled", make)

    def counts_only(self) -> acq.Labelled:
        return acq.Labelled(y=self.lab_y)

    def _rpr(self, x: np.ndarray) -> np.ndarray:
        """RPR curves (see :func:`exact_rpr_curves`); an all-zero input has RPR 1."""
        t0 = time.perf_counter()
        out = np.ones((len(x), self.k))
        nz = np.flatnonzero(_norms(x) > 0)
        if len(nz):
            out[nz] = exact_rpr_curves(self.model, x[nz], self.k)
        self.svd_seconds += time.perf_counter() - t0
        return out


def exact_rpr_curves(model: nn.Module, x: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` exact RPR curves of a classifier with ``C`` outputs, in float64.

    The library's scoring engine with the dense solver (:class:`rprselect.engine.Engine`,
    the model traced once): with ``C`` outputs A[x] is ``C x D``, built from ``C`` adjoint
    products, and its LAPACK SVD gives :math:`V_r`, so
    :math:`\\mathrm{RPR}(x; r) = \\|V_r^T x\\|^2 / \\|x\\|^2` (paper Eq. 10). Ranks beyond
    ``C`` (where A[x] has no more singular vectors) repeat the value at ``C``.
    """
    with torch.no_grad():
        C = int(model(torch.from_numpy(np.ascontiguousarray(x[:1]))).numel())
    r = min(k, C)
    engine = Engine(model, ScoreSettings(k=r, solver="dense"))
    out = np.empty((len(x), k))
    for i in range(0, len(x), _RPR_BATCH):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + _RPR_BATCH]))
        rows = engine.score_batch(xb, list(range(i, i + len(xb))))
        cum = np.asarray([row["rpr_curve"] for row in rows])
        out[i : i + len(xb), :r] = cum
        out[i : i + len(xb), r:] = cum[:, r - 1 : r]
    return out


def _norms(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1))


#: A strategy that is an acquisition plus a batch mode: :class:`rprselect.registry.Preset`.
Spec = Preset


def _needs(spec: Spec) -> tuple[str, ...]:
    return acq.ACQUISITIONS[spec.acquisition].needs


def _by_spec(spec: Spec, rnd: Round) -> np.ndarray:
    needs = _needs(spec)
    params = dict(spec.params)
    labelled: acq.Labelled | None = None
    if "labelled" in needs or (spec.acquisition == "vim" and "alpha" not in params):
        labelled = rnd.labelled()
    elif spec.batch == "stratified":
        labelled = rnd.counts_only()
    if spec.acquisition == "jacobian_frobenius":
        params.update(model=rnd.model, X=torch.from_numpy(np.ascontiguousarray(rnd.x)))
    return acq.acquire(
        spec.acquisition,
        rnd.curve() if "table" in needs else None,
        rnd.n,
        logits=rnd.logits(),
        x_norm=rnd.x_norm() if "x_norm" in needs else None,
        labelled=labelled,
        rng=rnd.rng,
        batch=spec.batch,
        transform=spec.transform,
        **params,
    )


def _bald(rnd: Round, mc_samples: int | None = None) -> np.ndarray:
    s = bald_scores(rnd.model, rnd.x, mc_samples or int(rnd.params.get("mc_samples", 20)))
    return np.lexsort((rnd.rng.permutation(len(s)), -s))[: rnd.n]


def _badge(rnd: Round) -> np.ndarray:
    return badge_sampling(rnd.model, rnd.x, rnd.n, rnd.rng)


def _coreset(rnd: Round) -> np.ndarray:
    feats = penultimate_features(rnd.model, rnd.x)
    centres = penultimate_features(rnd.model, rnd.lab_x)
    return k_center_greedy(feats, centres, rnd.n)[0]


def _rpr_kcenter(rnd: Round) -> np.ndarray:
    factor = int(rnd.params.get("factor", 5))
    cand = np.argsort(rnd.curve()[:, -1], kind="stable")[: min(len(rnd.x), factor * rnd.n)]
    feats = penultimate_features(rnd.model, rnd.x[cand])
    centres = penultimate_features(rnd.model, rnd.lab_x)
    return cand[k_center_greedy(feats, centres, rnd.n)[0]]


#: Every strategy the benchmark knows: a :class:`Spec` (the library's presets and
#: acquisitions, under the same names) or a function of the :class:`Round`.
STRATEGIES: dict[str, Spec | Callable[[Round], np.ndarray]] = {
    # baselines
    "random": Spec("random"),
    "margin": Spec("margin"),
    "entropy": Spec("entropy"),
    "least_confidence": PRESETS["least_confidence"],
    "bald": _bald,
    "bald_mc5": functools.partial(_bald, mc_samples=5),
    "bald_mc50": functools.partial(_bald, mc_samples=50),
    "badge": _badge,
    "coreset": _coreset,
    # controls without an SVD
    "max_logit": Spec("max_logit"),
    "energy": Spec("energy"),
    # RPR: the paper's rule and its variants
    "lowest": Spec("lowest"),
    "rank_mean": Spec("rank_mean"),
    "rank_entropy": Spec("rank_entropy"),
    "vim": Spec("vim"),
    **{n: p for n, p in PRESETS.items() if n != "least_confidence"},
    "rpr_kcenter": _rpr_kcenter,
}

#: Which family each strategy belongs to, for the report.
GROUPS: dict[str, str] = {
    **{
        n: "baseline"
        for n in (
            "random",
            "margin",
            "entropy",
            "least_confidence",
            "bald",
            "bald_mc5",
            "bald_mc50",
            "badge",
            "power_margin_rank",
            "power_margin",
            "coreset",
            "margin_strat",
        )
    },
    **{n: "control (no SVD)" for n in ("ratio", "max_logit", "energy", "hutchinson")},
}

#: The pilot's candidates: everything but the slow or redundant.
PILOT: tuple[str, ...] = tuple(
    n
    for n in STRATEGIES
    if n
    not in (
        "coreset",
        "least_confidence",
        "lowest_r5",
        "lowest_r2_strat",
        "lowest_r4_strat",
        "class_cond_r2",
        "rank_mean_r6",
        "vim_r4",
        "rpr_kcenter",
    )
)

#: The final runs' candidates on digits, chosen from the pilot (docs/acquisition.md).
FINAL: tuple[str, ...] = (
    "random",
    "margin",
    "entropy",
    "bald",
    "badge",
    "power_margin",
    "margin_strat",
    "ratio",
    "max_logit",
    "energy",
    "hutchinson",
    "lowest",
    "margin_rpr_g2",
    "margin_rpr_g1_r3",
    "margin_rpr_strat",
    "class_cond_strat",
)

#: MNIST's final list: nine of them. The machine ran about five times slower than measured
#: alone, so the controls that need no SVD (energy, ratio, max logit, Hutchinson), entropy and
#: two of the five RPR variants run on digits only (docs/acquisition.md).
FINAL_MNIST: tuple[str, ...] = (
    "random",
    "margin",
    "bald",
    "badge",
    "power_margin",
    "margin_strat",
    "lowest",
    "margin_rpr_g2",
    "margin_rpr_strat",
)


def eligible(name: str) -> bool:
    """Whether ``select`` can compute strategy ``name`` from a ScoreTable (docs/acquisition.md):
    an acquisition of the registry other than ``random``, with any batch mode."""
    s = STRATEGIES.get(name)
    return isinstance(s, Spec) and s.acquisition != "random"


def group_of(name: str) -> str:
    return GROUPS.get(name, "RPR")


def query(name: str, rnd: Round) -> np.ndarray:
    """Positions into ``rnd.x`` that strategy ``name`` picks.

    Raises:
        ValueError: an unknown name, or a strategy that returned duplicates or the wrong count.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    s = STRATEGIES[name]
    idx = np.asarray(_by_spec(s, rnd) if isinstance(s, Spec) else s(rnd), dtype=np.int64)
    if len(idx) != rnd.n or len(np.unique(idx)) != rnd.n:
        raise RuntimeError(f"strategy {name} returned {len(idx)} positions, not {rnd.n} unique")
    return idx
