"""An active-learning loop with scikit-activeml, its SkorchClassifier and the RPR query strategy.

The bias-free ``MNISTNet`` (for 8x8 images) is wrapped in scikit-activeml's ``SkorchClassifier``
and trained on a few labelled scikit-learn digits; the unlabelled ones carry the label -1. Each
query asks ``RPRSampling`` for the candidates with the lowest RPR, "labels" them from the known
targets, and retrains.

    python examples/skactiveml_loop.py --queries 10 --epochs 10

Needs ``pip install 'rprselect[skactiveml]'``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from skactiveml.classifier import SkorchClassifier

from rprselect.data.mnist import load_digits_tensors
from rprselect.integrations.skactiveml import RPRSampling
from rprselect.models import MNISTNet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10, help="rounds of querying")
    parser.add_argument("--batch-size", type=int, default=10, help="images labelled per round")
    parser.add_argument("--initial", type=int, default=50, help="labelled images to start")
    parser.add_argument("--pool", type=int, default=1000, help="unlabelled images to query")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per fit")
    parser.add_argument("--k", type=int, default=10, help="singular triplets (<= 10 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images, labels = load_digits_tensors()
    X_all, y_all = images.numpy(), labels.numpy()  # (1797, 1, 8, 8) float32 and int64
    order = np.random.default_rng(args.seed).permutation(len(X_all))
    train, test = order[: args.initial + args.pool], order[args.initial + args.pool :]
    X, y_true = X_all[train], y_all[train]
    y = np.full(len(X), -1)
    y[: args.initial] = y_true[: args.initial]

    clf = SkorchClassifier(
        MNISTNet,
        neural_net_param_dict={
            "module__in_size": 8,
            "optimizer": torch.optim.Adam,
            "lr": 1e-3,
            "max_epochs": args.epochs,
            "batch_size": 32,
            "train_split": None,
            "verbose": 0,
        },
        classes=np.arange(10),
        missing_label=-1,
        random_state=args.seed,
    )
    qs = RPRSampling(k=args.k, missing_label=-1, random_state=args.seed)
    clf.fit(X, y)
    test_acc = clf.score(X_all[test], y_all[test])
    print(f"start: {args.initial} labelled, test accuracy {test_acc:.3f}")
    for q in range(1, args.queries + 1):
        idx = qs.query(X, y, clf, batch_size=args.batch_size)
        y[idx] = y_true[idx]
        clf.fit(X, y)
        print(
            f"query {q}: labelled {int((y != -1).sum())}, "
            f"test accuracy {clf.score(X_all[test], y_all[test]):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
