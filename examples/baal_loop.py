"""An active-learning loop with baal's ActiveLearningLoop and the RPR heuristic.

The bias-free ``MNISTNet`` (for 8x8 images) is trained on a few labelled scikit-learn digits
of a baal ``ActiveLearningDataset``. Each step, ``pool_rpr`` scores the unlabelled pool,
``RPRHeuristic`` ranks it lowest-RPR first, and the loop labels the top ``--query-size``.

    python examples/baal_loop.py --queries 10 --epochs 10

Needs ``pip install 'rprselect[baal]'`` and baal (see scripts/install.sh).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import structlog
import torch
from baal.active import ActiveLearningDataset, ActiveLearningLoop
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rprselect.data.mnist import load_digits_tensors
from rprselect.integrations.baal import RPRHeuristic, pool_rpr
from rprselect.models import MNISTNet


def train(net: nn.Module, data: ActiveLearningDataset, epochs: int, seed: int) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = DataLoader(
        data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()


def accuracy(net: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(X).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10, help="rounds of querying")
    parser.add_argument("--query-size", type=int, default=10, help="images labelled per round")
    parser.add_argument("--initial", type=int, default=50, help="labelled images to start")
    parser.add_argument("--pool", type=int, default=1000, help="images in the active dataset")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per round")
    parser.add_argument("--k", type=int, default=10, help="singular triplets (<= 10 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # baal logs every step's uncertainty summary through structlog; keep warnings only
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    torch.manual_seed(args.seed)
    images, labels = load_digits_tensors()
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(images)))
    train_idx, test_idx = order[: args.pool], order[args.pool :]
    data = ActiveLearningDataset(TensorDataset(images[train_idx], labels[train_idx]))
    data.label(list(range(args.initial)))
    net = MNISTNet(in_size=8)
    loop = ActiveLearningLoop(
        data,
        get_probabilities=pool_rpr,
        heuristic=RPRHeuristic(),
        query_size=args.query_size,
        model=net,  # forwarded to pool_rpr with k
        k=args.k,
    )
    X_test, y_test = images[test_idx], labels[test_idx]
    train(net, data, args.epochs, args.seed)
    print(f"start: {data.n_labelled} labelled, test accuracy {accuracy(net, X_test, y_test):.3f}")
    for q in range(1, args.queries + 1):
        loop.step()
        train(net, data, args.epochs, args.seed + q)
        print(
            f"query {q}: labelled {data.n_labelled}, "
            f"test accuracy {accuracy(net, X_test, y_test):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
