"""RPRHeuristic in real baal: lowest RPR first, rank-normalised so CombineHeuristics' weighted
sum means what its weights say, and an ActiveLearningLoop step labels the lowest-RPR samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import rprselect
from rprselect.data.mnist import load_digits_tensors
from rprselect.models import MNISTNet

pytest.importorskip(
    "baal", reason="needs baal: pip install 'rprselect[baal]', see scripts/install.sh"
)

from baal.active import ActiveLearningDataset, ActiveLearningLoop  # noqa: E402
from baal.active.heuristics import AbstractHeuristic, CombineHeuristics, Entropy  # noqa: E402

from rprselect.integrations.baal import RPRHeuristic, pool_rpr, rank_normalise  # noqa: E402


def test_rank_normalise_values():
    np.testing.assert_allclose(rank_normalise([0.3, 1e-7, 0.9, 2e-7]), [1 / 3, 1.0, 0.0, 2 / 3])
    np.testing.assert_allclose(rank_normalise([0.5, 0.1, 0.5]), [0.25, 1.0, 0.25])  # mean rank
    np.testing.assert_allclose(rank_normalise([[0.1, 0.4], [0.2, 0.3]]), [0.0, 1.0])  # curves
    np.testing.assert_allclose(rank_normalise([0.7]), [1.0])
    with pytest.raises(ValueError, match="finite"):
        rank_normalise([0.1, np.nan])
    with pytest.raises(ValueError, match="shape"):
        rank_normalise([])


def test_heuristic_ranks_lowest_rpr_first():
    h = RPRHeuristic()
    assert isinstance(h, AbstractHeuristic) and h.reversed
    rpr = np.array([0.4, 0.05, 0.9, 0.2, 0.6])
    ranks, scores = h.get_ranks(rpr)
    assert ranks.tolist() == np.argsort(rpr).tolist()
    np.testing.assert_allclose(scores, rank_normalise(rpr))


def test_combine_heuristics_weights_a_rank_normalised_rpr():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=8)  # (n, classes)
    rpr = 1e-6 * rng.uniform(size=8)  # raw values this small would vanish beside entropy
    combined = CombineHeuristics([RPRHeuristic(), Entropy()], weights=[0.5, 0.5])
    ranks = combined([rpr, probs])
    entropy = Entropy().get_uncertainties(probs)
    want = np.argsort(0.5 * rank_normalise(rpr) + 0.5 * entropy)[::-1]
    assert ranks.tolist() == want.tolist()
    assert ranks.tolist() != np.argsort(entropy)[::-1].tolist()


def test_active_learning_loop_labels_the_lowest_rpr():
    images, labels = load_digits_tensors()
    data = ActiveLearningDataset(TensorDataset(images[:40], labels[:40]))
    data.label(list(range(10)))
    torch.manual_seed(0)
    net = MNISTNet(in_size=8)
    expected = pool_rpr(data.pool, net, k=3)
    want = rprselect.score(net, images[10:40], k=3, progress=False).rpr
    np.testing.assert_allclose(expected, want, rtol=1e-6)
    loop = ActiveLearningLoop(
        data, get_probabilities=pool_rpr, heuristic=RPRHeuristic(), query_size=4, model=net, k=3
    )
    assert loop.step()
    newly = sorted(int(i) for i in np.flatnonzero(data.labelled) if i >= 10)
    assert newly == sorted((10 + np.argsort(want)[:4]).tolist())
