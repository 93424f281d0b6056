"""RPR as a scikit-activeml query strategy.

scikit-activeml's pool strategies are ``SingleAnnotatorPoolQueryStrategy`` subclasses whose
``query(X, y, clf, candidates=None, batch_size=1, return_utilities=False)`` take the whole data
set with the unlabelled samples marked by ``missing_label`` in ``y``, score the candidates and
pick the ``batch_size`` samples of highest *utility*. :class:`RPRSampling` scores each
candidate x by RPR(x; k) (paper Eq. 10) with the torch network inside ``clf`` (a
``SkorchClassifier``, a skorch net or a bare module) and uses the utility

.. math:: u(x) = 1 - \\mathrm{RPR}(x; k) \\in [0, 1],

so the highest utility is the lowest RPR, the paper's rule. As the library expects, the
utilities of samples that are not candidates (the labelled ones) are NaN.

Needs ``pip install 'rprselect[skactiveml]'``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from rprselect.integrations.modal import find_module, pool_tensor
from rprselect.scoring import score

_EXTRA = "pip install 'rprselect[skactiveml]'"
try:
    from skactiveml.base import SingleAnnotatorPoolQueryStrategy
    from skactiveml.utils import MISSING_LABEL, simple_batch
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"rprselect.integrations.skactiveml needs scikit-activeml: {_EXTRA}"
    ) from _err

__all__ = ["RPRSampling", "find_network"]


def find_network(clf: Any) -> nn.Module:
    """The torch module inside a scikit-activeml ``SkorchClassifier`` (``neural_net_.module_``),
    a skorch net, a modAL learner or the module itself.

    Raises:
        ValueError: a classifier that is not fitted yet.
        TypeError: no torch module inside.
    """
    net = clf.__dict__.get("neural_net_") if hasattr(clf, "__dict__") else None
    if net is not None:
        return find_module(net)
    if type(clf).__name__ == "SkorchClassifier":
        raise ValueError("clf is a SkorchClassifier that is not fitted yet: call clf.fit(X, y)")
    return find_module(clf)


class RPRSampling(SingleAnnotatorPoolQueryStrategy):
    """Query the candidates with the lowest Right Projection Ratio (utility ``1 - RPR``).

    Args:
        k: singular triplets per sample (at most the number of classes for a classifier).
        tol: solver tolerance.
        solver: ``"auto"``, ``"dense"``, ``"lanczos"`` or ``"slepc"``.
        input_shape: the shape ``(C, *spatial)`` of one sample when X holds flat rows (default:
            guessed from the network's first convolution, see
            :func:`rprselect.integrations.modal.pool_tensor`).
        missing_label: the label of unlabelled samples in ``y``.
        random_state: breaks ties between equal utilities (scikit-activeml's ``simple_batch``).
        score_kwargs: further keyword arguments of :func:`rprselect.score` (``batch_size``,
            ``device``, ``config``, ...).
    """

    def __init__(
        self,
        k: int = 10,
        tol: float = 1e-4,
        solver: str = "auto",
        input_shape: tuple[int, ...] | None = None,
        missing_label: Any = MISSING_LABEL,
        random_state: Any = None,
        score_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(missing_label=missing_label, random_state=random_state)
        self.k = k
        self.tol = tol
        self.solver = solver
        self.input_shape = input_shape
        self.score_kwargs = score_kwargs

    def query(
        self,
        X: Any,
        y: Any,
        clf: Any,
        candidates: Any = None,
        batch_size: int = 1,
        return_utilities: bool = False,
    ) -> Any:
        """The indices of the ``batch_size`` candidates with the lowest RPR.

        Args:
            X: all samples, ``(n_samples, ...)``: image arrays ``(C, *spatial)`` or flat rows.
            y: their labels, ``missing_label`` for the unlabelled ones.
            clf: the fitted classifier holding the torch network.
            candidates: ``None`` (the unlabelled samples), indices into X, or samples.
            batch_size: how many to query.
            return_utilities: also return the utilities, ``(batch_size, n)``: ``1 - RPR`` for
                candidates, NaN for the others and for the samples already picked.

        Returns:
            ``query_indices`` (into X, or into ``candidates`` when they are samples), and the
            utilities with ``return_utilities=True``.

        Raises:
            ValueError: bad arguments (scikit-activeml's checks), an unfitted classifier.
            TypeError: no torch network inside ``clf``.
        """
        X, y, candidates, batch_size, return_utilities = self._validate_data(
            X, y, candidates, batch_size, return_utilities, reset=True
        )
        X_cand, mapping = self._transform_candidates(candidates, X, y)
        module = find_network(clf)
        pool = pool_tensor(module, X_cand, self.input_shape)
        kw = {"progress": False, **(self.score_kwargs or {})}
        table = score(module, pool, k=self.k, tol=self.tol, solver=self.solver, **kw)
        utilities_cand = np.full(len(X_cand), np.nan)
        utilities_cand[table.index] = 1.0 - table.rpr
        if mapping is None:
            utilities = utilities_cand
        else:
            utilities = np.full(len(X), np.nan)
            utilities[mapping] = utilities_cand
        return simple_batch(
            utilities,
            self.random_state_,
            batch_size=batch_size,
            return_utilities=return_utilities,
        )
