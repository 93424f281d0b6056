"""An active-learning loop with modAL, a skorch classifier and the RPR query strategy.

The bias-free ``MNISTNet`` (for 8x8 images) is wrapped in a skorch ``NeuralNetClassifier`` and
trained on a few labelled scikit-learn digits. Each query asks ``rpr_sampling`` for the pool
images with the lowest RPR, "labels" them from the known targets, and retrains.

    python examples/modal_loop.py --queries 10 --epochs 10

Needs ``pip install 'rprselect[modal]'``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from modAL.models import ActiveLearner
from skorch import NeuralNetClassifier
from torch import nn

from rprselect.data.mnist import load_digits_tensors
from rprselect.integrations import rpr_sampling
from rprselect.models import MNISTNet


class Learner(ActiveLearner):
    """modAL's ActiveLearner; ``teach`` works with scikit-learn >= 1.8.

    modAL 0.4.2.1 (its latest release) validates taught samples with ``check_X_y(...,
    force_all_finite=...)``, a keyword scikit-learn 1.8 removed; this appends them directly.
    """

    def _add_training_data(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X_training = np.concatenate([self.X_training, X])
        self.y_training = np.concatenate([self.y_training, y])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10, help="rounds of querying")
    parser.add_argument("--n-instances", type=int, default=10, help="images labelled per round")
    parser.add_argument("--initial", type=int, default=50, help="labelled images to start")
    parser.add_argument("--pool", type=int, default=1000, help="unlabelled images to query")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per fit")
    parser.add_argument("--k", type=int, default=10, help="singular triplets (<= 10 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images, labels = load_digits_tensors()
    X, y = images.numpy(), labels.numpy()  # (1797, 1, 8, 8) float32 and int64
    order = np.random.default_rng(args.seed).permutation(len(X))
    start, pool = order[: args.initial], order[args.initial : args.initial + args.pool]
    test = order[args.initial + args.pool :]
    X_pool, y_pool = X[pool], y[pool]

    net = NeuralNetClassifier(
        MNISTNet,
        module__in_size=8,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        max_epochs=args.epochs,
        batch_size=32,
        train_split=None,
        verbose=0,
    )
    learner = Learner(
        estimator=net, query_strategy=rpr_sampling, X_training=X[start], y_training=y[start]
    )
    print(f"start: {len(start)} labelled, test accuracy {learner.score(X[test], y[test]):.3f}")
    for q in range(1, args.queries + 1):
        idx, _ = learner.query(X_pool, n_instances=args.n_instances, k=args.k)
        learner.teach(X_pool[idx], y_pool[idx])
        X_pool, y_pool = np.delete(X_pool, idx, axis=0), np.delete(y_pool, idx)
        print(
            f"query {q}: labelled {len(learner.X_training)}, "
            f"test accuracy {learner.score(X[test], y[test]):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
