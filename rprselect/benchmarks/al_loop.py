"""The active-learning loop: data, splits, the network, training and one (strategy, seed,
budget) unit.

A unit is deterministic given its settings: the **start seed** fixes the pool, the start set
and the candidate draws; the **model seed** fixes every weight initialisation and minibatch
order; the strategy's generator is seeded from both. Every strategy of a (seed, budget) pair
sees the same pool, start set, first model and test set, so results are paired.

The start set draws ``budget`` samples of the pool at random, then thins each rare class to
``max(1, round(rare_keep * count))`` samples (the paper's imbalance, Section 1.3). Every
round retrains the network from scratch for a fixed number of Adam steps, evaluates it on the
test set, and queries ``query_size`` samples from a fresh uniform draw of ``candidates``
unlabelled samples (all of them when 0).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import imbalance_indices, load_digits_tensors, load_mnist
from ..layers import SumPool
from . import al_strategies as st

__all__ = ["Data", "ALNet", "load_data", "run_unit", "train"]


@dataclass(frozen=True)
class Data:
    """Float32 ``(N, C, H, W)`` images in [0, 1] and int64 labels; ``rare`` classes."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    n_classes: int
    rare: tuple[int, ...]


def load_data(dataset: str, data_dir: str | None, rare: tuple[int, ...] | None) -> Data:
    """``"digits"`` (scikit-learn 8x8, a fixed 70/30 split), ``"mnist"`` or ``"npz:PATH"``.

    For ``npz:PATH`` (MedMNIST layout, via :func:`rprselect.data.generic.load_npz`) the pool is
    the train split, the test split is the test set, images are zero-padded to a multiple of 4,
    and the rare classes default to the two least frequent of the train split.

    Raises:
        ValueError: an unknown dataset.
        ImportError: ``npz:`` without :mod:`rprselect.data.generic`.
    """
    if dataset == "digits":
        x, y = load_digits_tensors()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
        n_test = int(0.3 * len(x))
        tr, te = perm[n_test:], perm[:n_test]
        return Data(x[tr].numpy(), y[tr].numpy(), x[te].numpy(), y[te].numpy(), 10, rare or (1, 9))
    if dataset == "mnist":
        xtr, ytr = load_mnist(data_dir, "train", download=False)
        xte, yte = load_mnist(data_dir, "test", download=False)
        return Data(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), 10, rare or (1, 9))
    if dataset.startswith("npz:"):
        try:
            from ..data.generic import load_npz
        except ImportError as err:
            raise ImportError(f"--data npz: needs rprselect.data.generic.load_npz ({err})") from err
        d = load_npz(dataset[4:])
        trx, tex = _pad4(d.train_x.numpy()), _pad4(d.test_x.numpy())
        counts = np.bincount(d.train_y.numpy(), minlength=d.num_classes)
        default_rare = tuple(int(c) for c in np.argsort(counts, kind="stable")[:2])
        return Data(
            trx,
            d.train_y.numpy(),
            tex,
            d.test_y.numpy(),
            int(d.num_classes),
            rare or default_rare,
        )
    raise ValueError(f"dataset must be 'digits', 'mnist' or 'npz:PATH', got {dataset!r}")


def _pad4(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw or h != w:
        s = max(h + ph, w + pw)
        s += (-s) % 4
        out = np.zeros((*x.shape[:2], s, s), dtype=np.float32)
        out[..., :h, :w] = x
        return out
    return np.ascontiguousarray(x, dtype=np.float32)


class ALNet(nn.Module):
    """A small bias-free CNN (so A[x] x = f(x)): two 5x5 conv + ReLU + 2x2 sum-pool stages,
    then Linear-ReLU-(Dropout)-Linear. ``in_size`` must be a multiple of 4."""

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        in_size: int,
        width: int = 16,
        hidden: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2, bias=False),
            nn.ReLU(),
            SumPool(2),
            nn.Conv2d(width, 2 * width, 5, padding=2, bias=False),
            nn.ReLU(),
            SumPool(2),
            nn.Flatten(),
            nn.Linear(2 * width * (in_size // 4) ** 2, hidden, bias=False),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(hidden, n_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))  # type: ignore[no-any-return]


def train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, batch: int, lr: float, seed: int
) -> None:
    """``steps`` Adam steps of cross-entropy on reshuffled minibatches of ``(x, y)``."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    order = torch.randperm(len(xt), generator=gen)
    pos, b = 0, min(batch, len(xt))
    for _ in range(steps):
        if pos + b > len(order):
            order, pos = torch.randperm(len(xt), generator=gen), 0
        idx = order[pos : pos + b]
        pos += b
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    model.eval()


def _evaluate(model: nn.Module, data: Data, test: np.ndarray) -> tuple[float, float]:
    """Test accuracy and mean recall over the rare classes present in the test set."""
    pred = st.predict_logits(model, data.test_x[test]).argmax(1).numpy()
    y = data.test_y[test]
    hit = pred == y
    rec = [float(hit[y == c].mean()) for c in data.rare if (y == c).any()]
    return float(hit.mean()), float(np.mean(rec)) if rec else float("nan")


def split(cfg: Any, data: Data, seed: int, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pool, start)``: pool positions into ``train_x`` and start positions into the pool."""
    rng = np.random.default_rng([seed, 1])
    pool = rng.permutation(len(data.train_y))
    if cfg.pool_size:
        pool = pool[: cfg.pool_size]
    draw = np.random.default_rng([seed, 2, budget]).choice(len(pool), budget, replace=False)
    keep = imbalance_indices(data.train_y[pool[draw]], data.rare, cfg.rare_keep, seed=seed)
    return pool, np.sort(draw[keep.numpy()])


def run_unit(cfg: Any, data: Data, strategy: str, seed: int, budget: int) -> dict[str, Any]:
    """One strategy from one start set: the learning curve and what was queried."""
    pool, start = split(cfg, data, seed, budget)
    px, py = data.train_x[pool], data.train_y[pool]
    test = np.random.default_rng(0).permutation(len(data.test_y))
    if cfg.test_size:
        test = test[: cfg.test_size]
    labelled = np.zeros(len(pool), dtype=bool)
    labelled[start] = True
    model_seed = 7919 * (seed + 1) + 104729 * (budget + 1)  # its own stream, not the start's
    cand_rng = np.random.default_rng([seed, 3, budget])
    strat_rng = np.random.default_rng([seed, 4, budget])
    dropout = cfg.dropout if strategy.startswith("bald") else 0.0
    in_size = data.train_x.shape[-1]
    out: dict[str, Any] = {k: [] for k in ("n_labelled", "accuracy", "rare_recall")}
    out.update(query_seconds=[], svd_seconds=[], train_seconds=[], queried_classes=[])
    t_unit = time.perf_counter()
    for r in range(cfg.rounds + 1):
        torch.manual_seed(model_seed + r)
        model = ALNet(
            data.train_x.shape[1], data.n_classes, in_size, cfg.width, cfg.hidden, dropout
        )
        t0 = time.perf_counter()
        train(model, px[labelled], py[labelled], cfg.steps, cfg.batch_size, cfg.lr, model_seed + r)
        out["train_seconds"].append(time.perf_counter() - t0)
        acc, rare = _evaluate(model, data, test)
        out["n_labelled"].append(int(labelled.sum()))
        out["accuracy"].append(acc)
        out["rare_recall"].append(rare)
        if r == cfg.rounds:
            break
        unl = np.flatnonzero(~labelled)
        if cfg.candidates and len(unl) > cfg.candidates:
            unl = np.sort(cand_rng.choice(unl, size=cfg.candidates, replace=False))
        rnd = st.Round(
            model=model,
            x=px[unl],
            lab_x=px[labelled],
            lab_y=py[labelled],
            n=cfg.query_size,
            rng=strat_rng,
            k=cfg.rpr_k,
            n_classes=data.n_classes,
            params={"mc_samples": cfg.mc_samples, "factor": 5},
        )
        t0 = time.perf_counter()
        new = unl[st.query(strategy, rnd)]
        out["query_seconds"].append(time.perf_counter() - t0)
        out["svd_seconds"].append(rnd.svd_seconds)
        if labelled[new].any():
            raise RuntimeError(f"strategy {strategy} queried a labelled sample")
        labelled[new] = True
        out["queried_classes"].append(np.bincount(py[new], minlength=data.n_classes).tolist())
    out.update(
        strategy=strategy,
        seed=seed,
        budget=budget,
        model_seed=model_seed,
        start_size=int(len(start)),
        start_rare=int(np.isin(py[start], data.rare).sum()),
        pool_size=int(len(pool)),
        test_size=int(len(test)),
        seconds=time.perf_counter() - t_unit,
    )
    return out
