"""Acquisition scores: pure functions of a :class:`~rprselect.ScoreTable` and the model's outputs.

Every score is a *utility*: a float64 array of shape ``(N,)`` where **higher = query first**
(as in scikit-activeml and modAL). :func:`rpr_at` is the one exception: the raw RPR.

``table`` may be a :class:`~rprselect.ScoreTable` or its ``(N, k)`` RPR curve as an array
(ranks 1..k along a row; a 1-D array is a curve with k = 1). ``logits`` are the model's
``(N, C)`` outputs for the same rows, ``x_norm`` the ``(N,)`` input norms :math:`\\|x\\|_2`.

Scores from the SVD (paper Eq. 10, :math:`\\rho_r(x) = \\mathrm{RPR}(x; r)`):
:func:`lowest` (the paper's rule), :func:`rank_mean`, :func:`class_conditional`.
Controls that need no SVD: :func:`margin`, :func:`entropy`, :func:`max_softmax`,
:func:`max_logit`, :func:`energy`, :func:`output_input_ratio`, :func:`jacobian_frobenius`.
Fusions: :func:`margin_rpr`, :func:`rank_entropy`, :func:`vim` (+ :func:`calibrate_vim_alpha`).
Batches from any utility: :func:`stratified_batch`, :func:`power_batch`, :func:`ranked_batch`
(from :mod:`rprselect.batches`). :func:`acquire` calls any of them by name
(:mod:`rprselect.registry`). The scores themselves live in :mod:`rprselect.scores`.

Why the rank matters: for a C-class classifier :math:`V_C` spans the whole row space of
A[x], and since :math:`A[x]x = f(x)`,

.. math:: \\frac{\\|f(x)\\|^2}{\\sigma_1^2\\|x\\|^2} \\le \\rho_C(x)
    \\le \\frac{\\|f(x)\\|^2}{\\sigma_C^2\\|x\\|^2}:

at r = C the RPR is roughly the output-to-input norm ratio (:func:`output_input_ratio`).
"""

from __future__ import annotations

from .batches import power_batch, ranked_batch, stratified_batch
from .registry import ACQUISITIONS, Labelled, acquire
from .scores import (
    calibrate_vim_alpha,
    class_conditional,
    energy,
    entropy,
    jacobian_frobenius,
    lowest,
    margin,
    margin_rpr,
    max_logit,
    max_softmax,
    output_input_ratio,
    rank_entropy,
    rank_mean,
    rpr_at,
    vim,
)

__all__ = [
    # from the SVD
    "rpr_at",
    "lowest",
    "rank_mean",
    "class_conditional",
    # controls without an SVD
    "margin",
    "entropy",
    "max_softmax",
    "max_logit",
    "energy",
    "output_input_ratio",
    "jacobian_frobenius",
    # fusions
    "margin_rpr",
    "rank_entropy",
    "vim",
    "calibrate_vim_alpha",
    # batches
    "stratified_batch",
    "power_batch",
    "ranked_batch",
    # by name
    "ACQUISITIONS",
    "Labelled",
    "acquire",
]
