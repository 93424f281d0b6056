"""RPRSampling: a real scikit-activeml query strategy over a real SkorchClassifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rprselect
from rprselect.data.mnist import load_digits_tensors
from rprselect.models import MNISTNet

pytest.importorskip(
    "skactiveml", reason="needs scikit-activeml: pip install 'rprselect[skactiveml]'"
)
pytest.importorskip("skorch", reason="needs skorch: pip install 'rprselect[skactiveml]'")

from skactiveml.base import SingleAnnotatorPoolQueryStrategy  # noqa: E402
from skactiveml.classifier import SkorchClassifier  # noqa: E402

from rprselect.integrations.skactiveml import RPRSampling, find_network  # noqa: E402

K = 3


def _data(n: int = 40, labelled: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = load_digits_tensors()
    X, y_true = images[:n].numpy(), labels[:n].numpy()
    y = np.full(n, -1)
    y[:labelled] = y_true[:labelled]
    return X, y, y_true


def _clf(X: np.ndarray, y: np.ndarray) -> SkorchClassifier:
    torch.manual_seed(0)
    clf = SkorchClassifier(
        MNISTNet,
        neural_net_param_dict={
            "module__in_size": 8,
            "max_epochs": 1,
            "batch_size": 16,
            "train_split": None,
            "verbose": 0,
        },
        classes=np.arange(10),
        missing_label=-1,
        random_state=0,
    )
    return clf.fit(X, y)


def _rpr(clf: SkorchClassifier, X: np.ndarray) -> np.ndarray:
    net = clf.neural_net_.module_
    return rprselect.score(net, torch.from_numpy(X), k=K, progress=False).rpr


def test_queries_the_lowest_rpr_unlabelled_with_nan_for_labelled():
    X, y, _ = _data()
    clf = _clf(X, y)
    qs = RPRSampling(k=K, missing_label=-1, random_state=0)
    assert isinstance(qs, SingleAnnotatorPoolQueryStrategy)
    idx, util = qs.query(X, y, clf, batch_size=3, return_utilities=True)
    unlabelled = np.flatnonzero(y == -1)
    rpr = _rpr(clf, X[unlabelled])
    assert idx.tolist() == unlabelled[np.argsort(rpr)[:3]].tolist()
    assert util.shape == (3, len(X))
    assert np.isnan(util[0, y != -1]).all()
    np.testing.assert_allclose(util[0, unlabelled], 1.0 - rpr, rtol=1e-6)
    assert np.isnan(util[1, idx[0]]) and np.isnan(util[2, idx[:2]]).all()


def test_candidates_as_indices_and_as_samples():
    X, y, _ = _data()
    clf = _clf(X, y)
    qs = RPRSampling(k=K, missing_label=-1, random_state=0)
    cand = np.array([20, 25, 30, 35])
    idx, util = qs.query(X, y, clf, candidates=cand, batch_size=2, return_utilities=True)
    rpr = _rpr(clf, X[cand])
    assert idx.tolist() == cand[np.argsort(rpr)[:2]].tolist()
    others = np.setdiff1d(np.arange(len(X)), cand)
    assert np.isnan(util[0, others]).all()
    samples = X[cand][::-1].copy()
    idx2 = qs.query(X, y, clf, candidates=samples, batch_size=1)
    assert idx2.tolist() == [int(np.argmin(rpr[::-1]))]


def test_flat_rows_module_and_errors():
    X, y, _ = _data()
    clf = _clf(X, y)
    net = find_network(clf)
    assert net is clf.neural_net_.module_
    flat = X.reshape(len(X), -1)
    qs = RPRSampling(k=K, missing_label=-1, random_state=0)
    assert (
        qs.query(flat, y, net, batch_size=2).tolist() == qs.query(X, y, clf, batch_size=2).tolist()
    )
    unfitted = SkorchClassifier(MNISTNet, classes=np.arange(10), missing_label=-1)
    with pytest.raises(ValueError, match="not fitted"):
        qs.query(X, y, unfitted)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        qs.query(X, y, "a classifier")
    with pytest.raises(ValueError, match="batch_size"):
        qs.query(X, y, clf, batch_size=0)
