"""Per-sample acquisition utilities (higher = query first); see :mod:`rprselect.acquisition`.

Notation: :math:`\\rho_r(x) = \\mathrm{RPR}(x; r)` (paper Eq. 10), :math:`z = f(x) \\in
\\mathbb{R}^C` the logits, :math:`p = \\mathrm{softmax}(z)`, :math:`p_{(1)} \\ge p_{(2)}` its
two largest entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .table import ScoreTable

__all__ = [
    "rpr_at",
    "lowest",
    "rank_mean",
    "class_conditional",
    "margin",
    "entropy",
    "max_softmax",
    "max_logit",
    "energy",
    "output_input_ratio",
    "jacobian_frobenius",
    "margin_rpr",
    "rank_entropy",
    "vim",
    "calibrate_vim_alpha",
    "curve_of",
    "check_logits",
    "check_x_norm",
]


# -- argument checks --------------------------------------------------------------------------
def curve_of(table: Any, name: str = "table") -> np.ndarray:
    """The ``(N, k)`` float64 RPR curve of a ScoreTable or of an array (1-D: k = 1).

    Raises:
        TypeError: neither a ScoreTable nor array-like.
        ValueError: more than 2 dimensions, or NaN entries.
    """
    if isinstance(table, ScoreTable):
        c = np.asarray(table.rpr_curve, dtype=np.float64)
    else:
        try:
            c = np.asarray(table, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a ScoreTable or an (N, k) array of RPR values, "
                f"got {type(table).__name__}"
            ) from err
    if c.ndim == 1:
        c = c[:, None]
    if c.ndim != 2:
        raise ValueError(f"{name} must hold an (N, k) RPR curve, got shape {c.shape}")
    bad = np.flatnonzero(np.isnan(c).any(1))
    if len(bad):
        raise ValueError(f"{name} must not contain NaN RPR values, got NaN in rows {bad[:5]}")
    return c


def _rank(c: np.ndarray, r: int | None, name: str = "r") -> int:
    k = c.shape[1]
    if r is None:
        return k
    if isinstance(r, bool) or not isinstance(r, int | np.integer):
        raise TypeError(f"{name} must be an int or None, got {type(r).__name__}")
    if not 1 <= r <= k:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= k = {k}, got {r}")
    return int(r)


def check_logits(logits: Any, n: int | None = None, name: str = "logits") -> np.ndarray:
    """``logits`` as a float64 ``(N, C)`` array (``n`` rows when given), finite.

    Raises:
        ValueError: wrong shape, fewer than 2 classes for a softmax, or non-finite values.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or (n is not None and z.shape[0] != n):
        want = f"({n}, C)" if n is not None else "(N, C)"
        raise ValueError(f"{name} must have shape {want}, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(
            f"{name} must be finite, got NaN or inf in rows "
            f"{np.flatnonzero(~np.isfinite(z).all(1))[:5]}"
        )
    return z


def check_x_norm(x_norm: Any, n: int, name: str = "x_norm") -> np.ndarray:
    """``x_norm`` as a float64 ``(n,)`` array of positive, finite norms.

    Raises:
        ValueError: wrong shape, NaN, or a norm <= 0.
    """
    if isinstance(x_norm, torch.Tensor):
        x_norm = x_norm.detach().cpu().numpy()
    v = np.asarray(x_norm, dtype=np.float64)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    if not (np.isfinite(v).all() and (v > 0).all()):
        raise ValueError(f"{name} must be finite and > 0, got min {np.nanmin(v) if n else v}")
    return v


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(1)
    return np.asarray(m + np.log(np.exp(z - m[:, None]).sum(1)), dtype=np.float64)


def _unit_ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks of ``v`` (1 = smallest, ties share their mean rank) divided by N."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    ranks = np.empty(len(v))
    start = 0
    for end in np.append(np.flatnonzero(np.diff(sv) != 0) + 1, len(v)):
        ranks[order[start:end]] = 0.5 * (start + 1 + end)
        start = end
    return ranks / max(len(v), 1)


# -- from the SVD -----------------------------------------------------------------------------
def rpr_at(table: Any, r: int | None = None) -> np.ndarray:
    """The raw :math:`\\rho_r(x)` of every row (not a utility: low = query first).

    Args:
        table: a ScoreTable or its ``(N, k)`` RPR curve.
        r: the rank, ``1 <= r <= k`` (default k).
    """
    c = curve_of(table)
    return c[:, _rank(c, r) - 1].copy()


def lowest(table: Any, r: int | None = None) -> np.ndarray:
    """The paper's rule: query the lowest RPR first (at rank k by default).

    .. math:: u(x) = -\\rho_r(x)
    """
    return -rpr_at(table, r)


def rank_mean(table: Any, r_max: int | None = None) -> np.ndarray:
    """Minus the mean of the RPR curve over ranks 1..r_max (default k).

    .. math:: u(x) = -\\frac{1}{r_{\\max}} \\sum_{r=1}^{r_{\\max}} \\rho_r(x)
    """
    c = curve_of(table)
    return np.asarray(-c[:, : _rank(c, r_max, "r_max")].mean(1), dtype=np.float64)


def class_conditional(
    table: Any, pred: Any, ref_rpr: Any, ref_class: Any, r: int | None = None
) -> np.ndarray:
    """One minus the percentile of a sample's RPR among the labelled samples of its predicted
    class.

    .. math:: u(x) = 1 - \\frac{\\#\\{j \\in L_c: \\rho_r(x_j) < \\rho_r(x)\\}
        + \\tfrac12\\,\\#\\{j \\in L_c: \\rho_r(x_j) = \\rho_r(x)\\}}{|L_c|},
        \\qquad c = \\hat y(x)

    so a sample whose RPR is low *for its class* scores near 1 whatever the class's ink.
    When no labelled sample has class c, :math:`L_c` is the whole labelled set.

    Args:
        table: a ScoreTable or its ``(N, k)`` RPR curve.
        pred: ``(N,)`` predicted classes.
        ref_rpr: ``(M,)`` RPR of the labelled samples at rank r, or their ``(M, k)`` curves.
        ref_class: ``(M,)`` their classes.
        r: the rank (default k).

    Raises:
        ValueError: shapes disagree or the labelled set is empty.
    """
    c = curve_of(table)
    r = _rank(c, r)
    v = c[:, r - 1]
    ref = curve_of(ref_rpr, "ref_rpr")
    ref_v = ref[:, -1] if ref.shape[1] == 1 else ref[:, _rank(ref, r) - 1]
    p, rc = np.asarray(pred).ravel(), np.asarray(ref_class).ravel()
    if p.shape != (len(v),):
        raise ValueError(f"pred must have shape ({len(v)},), got {np.asarray(pred).shape}")
    if rc.shape != (len(ref_v),) or len(ref_v) == 0:
        raise ValueError(
            f"ref_class must have one class per labelled sample ({len(ref_v)} > 0), "
            f"got shape {np.asarray(ref_class).shape}"
        )
    out = np.empty(len(v))
    for cls in np.unique(p):
        mine = p == cls
        pool_ref = np.sort(ref_v[rc == cls]) if (rc == cls).any() else np.sort(ref_v)
        below = np.searchsorted(pool_ref, v[mine], side="left")
        upto = np.searchsorted(pool_ref, v[mine], side="right")
        out[mine] = 1.0 - (below + 0.5 * (upto - below)) / len(pool_ref)
    return out


# -- controls without an SVD ------------------------------------------------------------------
def margin(logits: Any) -> np.ndarray:
    """Smallest softmax margin first (the active-learning baseline to beat).

    .. math:: u(x) = -\\big(p_{(1)} - p_{(2)}\\big)
    """
    p = np.sort(_softmax(check_logits(logits)), axis=1)
    if p.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes for a margin, got {p.shape[1]}")
    return np.asarray(-(p[:, -1] - p[:, -2]), dtype=np.float64)


def entropy(logits: Any) -> np.ndarray:
    """Predictive entropy.

    .. math:: u(x) = -\\sum_c p_c \\log p_c
    """
    p = _softmax(check_logits(logits))
    return np.asarray(-(p * np.log(np.clip(p, 1e-300, None))).sum(1), dtype=np.float64)


def max_softmax(logits: Any) -> np.ndarray:
    """Least confidence (Hendrycks & Gimpel's baseline).

    .. math:: u(x) = -\\max_c p_c
    """
    return np.asarray(-_softmax(check_logits(logits)).max(1), dtype=np.float64)


def max_logit(logits: Any) -> np.ndarray:
    """Smallest maximum logit first.

    .. math:: u(x) = -\\max_c z_c
    """
    return np.asarray(-check_logits(logits).max(1), dtype=np.float64)


def energy(logits: Any, T: float = 1.0) -> np.ndarray:
    """The free energy (Liu et al. 2020); low energy = confident, so high energy is queried.

    .. math:: u(x) = E(x) = -T \\log \\sum_c e^{z_c / T}

    Raises:
        ValueError: ``T <= 0``.
    """
    if not (isinstance(T, int | float) and T > 0):
        raise ValueError(f"T must be a number > 0, got {T!r}")
    return -T * _logsumexp(check_logits(logits) / T)


def output_input_ratio(logits: Any, x_norm: Any) -> np.ndarray:
    """Smallest output-to-input norm ratio first: what :math:`\\rho_C` reduces to at k = C.

    .. math:: u(x) = -\\frac{\\|f(x)\\|_2}{\\|x\\|_2}
    """
    z = check_logits(logits)
    return np.asarray(-np.linalg.norm(z, axis=1) / check_x_norm(x_norm, len(z)), dtype=np.float64)


def jacobian_frobenius(
    model: nn.Module, X: Any, n_probes: int = 8, seed: int = 0, batch_size: int = 64
) -> np.ndarray:
    """Minus a Hutchinson estimate of :math:`\\|A[x]\\|_F^2` (smallest gain first), no SVD.

    With :math:`v_1..v_m` i.i.d. Rademacher vectors in input space,

    .. math:: u(x) = -\\frac{1}{m} \\sum_{j=1}^{m} \\|A[x]\\,v_j\\|_2^2,\\qquad
        \\mathbb{E}\\,\\|A v\\|^2 = \\operatorname{tr}(A^T A) = \\|A\\|_F^2 = \\sum_i \\sigma_i^2,

    using :func:`rprselect.linearize_batch` (``matmat``); the estimate's relative standard
    deviation is at most :math:`\\sqrt{2/m}`.

    Args:
        model: the network.
        X: ``(N, C, *spatial)`` samples (tensor or array).
        n_probes: ``m >= 1``.
        seed: seed of the probes.
        batch_size: samples per linearisation.

    Raises:
        ValueError: ``n_probes`` or ``batch_size`` < 1.
    """
    from .linearize import linearize_batch

    for name, v in (("n_probes", n_probes), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    xt = torch.as_tensor(np.asarray(X)) if not isinstance(X, torch.Tensor) else X
    gen = torch.Generator().manual_seed(seed)
    out = np.empty(len(xt))
    for i in range(0, len(xt), batch_size):
        xb = xt[i : i + batch_size]
        op = linearize_batch(model, xb)
        probes = torch.randint(0, 2, (len(xb), n_probes, *xb.shape[1:]), generator=gen)
        y = op.matmat((2 * probes - 1).to(xb.dtype))
        out[i : i + len(xb)] = y.flatten(2).double().pow(2).sum(2).mean(1).numpy()
    return -out


# -- fusions ----------------------------------------------------------------------------------
def margin_rpr(logits: Any, table: Any, gamma: float = 1.0, r: int | None = None) -> np.ndarray:
    """Margin uncertainty weighted by the RPR's complement.

    .. math:: u(x) = \\big(1 - (p_{(1)} - p_{(2)})\\big)\\,\\big(1 - \\rho_r(x)\\big)^{\\gamma}

    Both factors lie in ``[0, 1]`` and grow with the need to query, so the product is a
    utility; ``gamma = 0`` ranks exactly as :func:`margin`.

    Raises:
        ValueError: ``gamma < 0`` or shapes disagree.
    """
    if not (isinstance(gamma, int | float) and gamma >= 0):
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    rho = rpr_at(table, r)
    z = check_logits(logits, len(rho))
    return (1.0 + margin(z)) * np.clip(1.0 - rho, 0.0, 1.0) ** gamma


def rank_entropy(table: Any, logits: Any, r: int | None = None) -> np.ndarray:
    """Rank average of low RPR and high predictive entropy, both ranked over the pool.

    .. math:: u(x) = \\tfrac12\\big[\\operatorname{rank}(1 - \\rho_r(x))
        + \\operatorname{rank}(H[p(y \\mid x)])\\big] / N \\in (0, 1]

    (average ranks, 1 = smallest). Ranks make the two commensurable without a weight.
    """
    rho = rpr_at(table, r)
    h = entropy(check_logits(logits, len(rho)))
    return 0.5 * (_unit_ranks(1.0 - rho) + _unit_ranks(h))


def _residual(table: Any, x_norm: Any, r: int | None) -> np.ndarray:
    rho = rpr_at(table, r)
    return check_x_norm(x_norm, len(rho)) * np.sqrt(np.clip(1.0 - rho, 0.0, None))


def vim(logits: Any, table: Any, x_norm: Any, alpha: float, r: int | None = None) -> np.ndarray:
    """ViM-style score (Wang et al. 2022) with the residual outside :math:`V_r`.

    ViM's in-distribution score is the log-sum-exp of the logits minus a virtual logit
    :math:`\\alpha\\|x^{P^\\perp}\\|`. Here the residual is the part of x outside the top-r
    right singular vectors of A[x], :math:`\\|x - V_rV_r^Tx\\| = \\|x\\|\\sqrt{1 - \\rho_r(x)}`,
    and the utility is minus the in-distribution score:

    .. math:: u(x) = \\alpha\\,\\|x\\|\\sqrt{1 - \\rho_r(x)} - \\log\\sum_c e^{z_c}

    (high residual and low confidence are queried first).

    Raises:
        ValueError: ``alpha < 0`` or shapes disagree.
    """
    if not (isinstance(alpha, int | float) and alpha >= 0 and np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    res = _residual(table, x_norm, r)
    return alpha * res - _logsumexp(check_logits(logits, len(res)))


def calibrate_vim_alpha(
    logits_lab: Any, table_lab: Any, x_norm_lab: Any, r: int | None = None
) -> float:
    """ViM's scale, fitted on the labelled set: mean absolute max logit over mean residual.

    .. math:: \\alpha = \\frac{\\operatorname{mean}_{j \\in L} |\\max_c z_{jc}|}
        {\\operatorname{mean}_{j \\in L} \\|x_j\\|\\sqrt{1 - \\rho_r(x_j)}}

    Returns 0 when every labelled residual is 0.
    """
    res = _residual(table_lab, x_norm_lab, r)
    z = check_logits(logits_lab, len(res), "logits_lab")
    if len(res) == 0:
        raise ValueError("table_lab must hold at least one labelled sample, got 0")
    den = float(res.mean())
    return float(np.abs(z.max(1)).mean() / den) if den > 0 else 0.0
