"""The modAL query strategies, on a bare module, a skorch net and modAL learners."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

import rprselect
from rprselect.data.mnist import load_digits_tensors
from rprselect.integrations.modal import (
    find_module,
    pool_tensor,
    rpr_batch_sampling,
    rpr_sampling,
)
from rprselect.models import MNISTNet


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits_tensors()
    return X[:160].numpy(), y[:160].numpy()


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return MNISTNet(in_size=8)


def _skorch_net(module_or_class, **kw):
    skorch = pytest.importorskip("skorch", reason="needs skorch: pip install 'rprselect[modal]'")
    return skorch.NeuralNetClassifier(
        module_or_class,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        max_epochs=1,
        batch_size=32,
        train_split=None,
        verbose=0,
        **kw,
    )


def _oracle_rpr(module: nn.Module, X: np.ndarray, k: int) -> np.ndarray:
    """RPR at rank k from the core: dense SVD of every A[x] (10 x 64, exact)."""
    x = torch.as_tensor(X)
    result = rprselect.svd_batch(module, x, k=k, solver="dense")
    return rprselect.rpr(result, x)[:, -1].numpy()


def test_bare_module_queries_the_lowest_rpr(module, digits):
    X, _ = digits
    pool = X[:40]
    idx, scores = rpr_sampling(module, pool, n_instances=5, k=6, strategy="lowest")
    expected = _oracle_rpr(module, pool, 6)
    assert idx.shape == scores.shape == (5,)
    np.testing.assert_array_equal(idx, np.argsort(expected, kind="stable")[:5])
    np.testing.assert_allclose(scores, expected[idx], rtol=1e-5)
    assert np.all(np.diff(scores) >= 0)


def test_skorch_net_and_flat_rows(module, digits):
    X, y = digits
    net = _skorch_net(module)
    net.initialize()
    pool = X[:40]
    idx_mod, _ = rpr_sampling(module, pool, n_instances=4)
    idx_net, _ = rpr_sampling(net, pool, n_instances=4)
    idx_flat, scores_flat = rpr_sampling(net, pool.reshape(40, -1), n_instances=4)  # (40, 64)
    idx_shape, _ = rpr_sampling(net, pool.reshape(40, -1), n_instances=4, input_shape=(1, 8, 8))
    idx_t, _ = rpr_sampling(net, torch.as_tensor(pool), n_instances=4)
    for other in (idx_net, idx_flat, idx_shape, idx_t):
        np.testing.assert_array_equal(other, idx_mod)


def test_active_learner_query(module, digits):
    modal = pytest.importorskip(
        "modAL.models", reason="needs modAL: pip install 'rprselect[modal]'"
    )
    X, y = digits
    net = _skorch_net(MNISTNet, module__in_size=8)
    learner = modal.ActiveLearner(
        estimator=net, query_strategy=rpr_sampling, X_training=X[:30], y_training=y[:30]
    )
    pool = X[30:90]
    idx, chosen = learner.query(pool, n_instances=3, k=5, strategy="lowest")
    expected = _oracle_rpr(learner.estimator.module_, pool, 5)
    np.testing.assert_array_equal(idx, np.argsort(expected, kind="stable")[:3])
    np.testing.assert_array_equal(chosen, pool[idx])


def test_deep_active_learner_loop_over_three_queries(digits):
    modal = pytest.importorskip(
        "modAL.models", reason="needs modAL: pip install 'rprselect[modal]'"
    )
    if not hasattr(modal, "DeepActiveLearner"):
        pytest.skip("this modAL has no DeepActiveLearner (added in 0.4.2)")
    X, y = digits
    torch.manual_seed(1)
    learner = modal.DeepActiveLearner(
        estimator=_skorch_net(MNISTNet, module__in_size=8), query_strategy=rpr_batch_sampling
    )
    learner.teach(X[:30], y[:30])
    pool_ids = np.arange(30, 130)
    taught = []
    for _ in range(3):
        idx, _ = learner.query(X[pool_ids], n_instances=4, k=5)
        assert len(set(idx.tolist())) == 4
        taught.extend(pool_ids[idx].tolist())
        learner.teach(X[pool_ids[idx]], y[pool_ids[idx]])
        pool_ids = np.delete(pool_ids, idx)
    assert len(set(taught)) == 12 and len(pool_ids) == 100 - 12
    assert not set(taught) & set(pool_ids.tolist())


def test_batch_sampling_without_labelled_set(module, digits):
    X, _ = digits
    pool = X[:50]
    expected = _oracle_rpr(module, pool, 10)
    idx, scores = rpr_batch_sampling(module, pool, n_instances=6)  # a module has no X_training
    assert idx[0] == np.argmin(expected)  # cold start: the lowest RPR first
    assert len(set(idx.tolist())) == 6
    np.testing.assert_allclose(scores, expected[idx], rtol=1e-5)
    only_rpr, _ = rpr_batch_sampling(module, pool, n_instances=6, alpha=0.0)
    np.testing.assert_array_equal(only_rpr, np.argsort(expected, kind="stable")[:6])


def test_batch_sampling_is_diverse_with_a_labelled_set(module, digits):
    X, _ = digits

    class Learner:  # what rpr_batch_sampling reads from a modAL ActiveLearner
        estimator = module
        X_training = X[100:130]

    pool = X[:50]
    idx, _ = rpr_batch_sampling(Learner(), pool, n_instances=3, alpha=1.0)
    flat, ref = pool.reshape(50, -1).astype(np.float64), X[100:130].reshape(30, -1)
    dist = np.linalg.norm(flat[:, None] - ref[None], axis=-1).min(1)
    assert idx[0] == np.argmax(dist)  # alpha=1: the farthest from everything labelled
    picked = flat[idx[:2]]
    dist2 = np.minimum(dist, np.linalg.norm(flat[:, None] - picked[None], axis=-1).min(1))
    dist2[idx[:2]] = -1
    assert idx[2] == np.argmax(dist2)


def test_find_module_and_errors(module):
    class Wrapper:
        estimator = module

    assert find_module(module) is module
    assert find_module(Wrapper()) is module
    net = _skorch_net(MNISTNet, module__in_size=8)
    with pytest.raises(ValueError, match="not initialised"):
        find_module(net)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_module(object())
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        rpr_sampling(module, [[0.0] * 64])
    with pytest.raises(ValueError, match="input_shape"):
        pool_tensor(module, np.ones((3, 64), np.float32), input_shape=(1, 7, 7))
    with pytest.raises(ValueError, match="n_instances"):
        rpr_batch_sampling(module, np.ones((3, 1, 8, 8), np.float32), n_instances=4)
    with pytest.raises(ValueError, match="n_instances"):
        rpr_sampling(module, np.ones((3, 1, 8, 8), np.float32), n_instances=0)
    with pytest.raises(TypeError, match="n_instances"):
        rpr_sampling(module, np.ones((3, 1, 8, 8), np.float32), n_instances=1.5)
    with pytest.raises(ValueError, match="alpha"):
        rpr_batch_sampling(module, np.ones((3, 1, 8, 8), np.float32), alpha=2.0)


def test_missing_scikit_learn_names_the_extra(module, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.metrics", None)
    with pytest.raises(ImportError, match=r"rprselect\[modal\]"):
        rpr_batch_sampling(module, np.ones((3, 1, 8, 8), np.float32), n_instances=1)


def test_rpr_sampling_default_k_adapts_to_a_binary_classifier() -> None:
    """k=None: a binary classifier is scored at k=2 instead of raising (issue 15, item 8)."""
    import warnings

    from cli_models import tiny_binary

    from rprselect.integrations.modal import rpr_sampling
    from rprselect.scoring import score

    net = tiny_binary().double()
    X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx, vals = rpr_sampling(net, X.numpy(), n_instances=2)
        want = score(net, X, k=2, progress=False)
    assert len(set(idx.tolist())) == 2 and set(idx.tolist()) <= set(range(6))
    assert vals.shape == (2,) and np.all(np.isfinite(vals))
    assert want.k == 2 and want.rpr_curve.shape == (6, 2)
