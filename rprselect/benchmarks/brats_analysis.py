"""Analysis of the BraTS benchmark: RPR of volumes and slices, quantile tables, Spearman, Fig. 4.

The volume-level RPR is that of the whole stitched sliding-window operator (paper Section 1.4):

.. math:: \\mathrm{RPR}(x; k) = \\frac{\\|V_k V_k^T x\\|_2^2}{\\|x\\|_2^2}, \\qquad
    A_{sw}[x] = \\frac{1}{c} \\sum_w P_w^T A[x_w] P_w

where :math:`P_w` extracts window :math:`w`, :math:`c` counts the windows covering each voxel
and the SVD is taken of :math:`A_{sw}[x]`, so that :math:`A_{sw}[x]\\,x` is MONAI's
``sliding_window_inference(x)`` with ``mode="constant"`` (Eq. 10 of the paper, Table 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from rprselect.benchmarks.common import markdown_table

__all__ = [
    "PAPER_TABLE2",
    "QUANTILE_BINS",
    "QuantileRow",
    "binary_dice",
    "per_fold_markdown",
    "quantile_table",
    "scatter_plot",
    "spearman",
    "volume_rpr",
    "slice_rpr",
]

#: paper Table 2: mean Dice of the volumes by RPR quantile (369 volumes, 5-fold CV)
PAPER_TABLE2: dict[str, float] = {
    "below 10%": 0.7728,
    "10-50%": 0.8979,
    "50-90%": 0.9375,
    "above 90%": 0.9522,
    "entire set": 0.9067,
}
#: (name, lower quantile, upper quantile) of the rows of Table 2
QUANTILE_BINS: tuple[tuple[str, float, float], ...] = (
    ("below 10%", 0.0, 0.1),
    ("10-50%", 0.1, 0.5),
    ("50-90%", 0.5, 0.9),
    ("above 90%", 0.9, 1.0),
    ("entire set", 0.0, 1.0),
)


def binary_dice(pred: np.ndarray, target: np.ndarray, empty: float = float("nan")) -> float:
    """Dice of two binary masks, :math:`2|P \\cap G| / (|P| + |G|)`.

    Args:
        pred: predicted mask (any shape, nonzero = foreground).
        target: ground truth of the same shape.
        empty: value returned when both masks are empty (Dice is 0/0 there).

    Returns:
        Dice in [0, 1], or ``empty``.
    """
    p, g = np.asarray(pred) > 0, np.asarray(target) > 0
    if p.shape != g.shape:
        raise ValueError(f"pred must have the shape of target {g.shape}, got {p.shape}")
    denom = int(p.sum()) + int(g.sum())
    return empty if denom == 0 else 2.0 * int((p & g).sum()) / denom


@dataclass
class RPRValue:
    """RPR at rank k of one sample, with the solver's diagnostics."""

    rpr: float
    converged: bool
    n_products: int
    seconds: float
    prediction: np.ndarray  # argmax of A[x] x, the tensor model's own segmentation


def volume_rpr(
    model: nn.Module, x: Tensor, roi_size: Sequence[int], k: int = 10, tol: float = 1e-4
) -> RPRValue:
    """RPR(x; k) of one volume under the sliding-window operator, by Lanczos (paper Table 2).

    Args:
        model: trained network.
        x: volume ``(C, *spatial)``.
        roi_size: sliding-window size.
        k: number of singular triplets.
        tol: relative residual tolerance of the solver.

    Returns:
        :class:`RPRValue`; ``prediction`` is the argmax of the stitched logits.
    """
    import warnings

    import rprselect
    from rprselect.sliding import sliding_window_operator

    x = x.to(next(model.parameters()).device)
    op = sliding_window_operator(model, x, roi_size, overlap=0.25, mode="constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rprselect.NotConvergedWarning)
        res = rprselect.svd(op, k=k, tol=tol, solver="lanczos")
    value = float(rprselect.rpr(res, x)[-1])
    pred = op.output.argmax(0).cpu().numpy()  # type: ignore[union-attr]
    return RPRValue(value, bool(res.converged.all()), int(res.n_products), res.seconds, pred)


def slice_rpr(
    model: nn.Module, X: Tensor, k: int = 10, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RPR(x_s; k) of a batch of 2-D slices, each with its own A[x_s] of a 2-D model.

    Args:
        model: a 2-D network.
        X: slices ``(B, C, H, W)``, none all-zero.
        k: number of singular triplets.
        tol: relative residual tolerance.

    Returns:
        ``(rpr (B,), converged (B,), predictions (B, H, W), n_products (B,))``.
    """
    import warnings

    import rprselect

    X = X.to(next(model.parameters()).device)
    op = rprselect.linearize_batch(model, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rprselect.NotConvergedWarning)
        res = rprselect.svd_batch(op, k=k, tol=tol, solver="lanczos")
    values = rprselect.rpr(res, X)[:, -1].cpu().numpy()
    pred = op.output.argmax(1).cpu().numpy()  # type: ignore[union-attr]
    conv = res.converged.all(-1).cpu().numpy()
    return values, conv, pred, np.asarray(res.n_products).reshape(-1)


@dataclass
class QuantileRow:
    """One row of Table 2: samples whose RPR lies in a quantile range, and their mean Dice."""

    name: str
    n: int
    rpr_range: tuple[float, float]
    mean_dice: float


def quantile_table(rpr: Sequence[float], dice: Sequence[float]) -> list[QuantileRow]:
    """Mean Dice by RPR quantile, the rows of paper Table 2.

    A sample is in ``below 10%`` if its RPR is at most the 10% quantile, in ``10-50%`` if above
    the 10% and at most the 50% quantile, and so on (linear interpolation of quantiles).

    Args:
        rpr: RPR of each sample.
        dice: Dice of each sample (same order).

    Returns:
        One :class:`QuantileRow` per entry of ``QUANTILE_BINS``; an empty bin has NaN Dice.
    """
    r, d = np.asarray(rpr, dtype=float), np.asarray(dice, dtype=float)
    if r.shape != d.shape or r.ndim != 1 or r.size == 0:
        raise ValueError(f"rpr and dice must be equal-length 1-D, got {r.shape} and {d.shape}")
    rows = []
    for name, lo, hi in QUANTILE_BINS:
        qlo, qhi = np.quantile(r, lo), np.quantile(r, hi)
        mask = (r <= qhi) & ((r > qlo) if lo > 0 else np.ones_like(r, dtype=bool))
        mean = float(d[mask].mean()) if mask.any() else float("nan")
        rng = (float(r[mask].min()), float(r[mask].max())) if mask.any() else (math.nan,) * 2
        rows.append(QuantileRow(name, int(mask.sum()), rng, mean))  # type: ignore[arg-type]
    return rows


def quantile_markdown(rows: Sequence[QuantileRow], paper: bool = True) -> str:
    """Table 2 as Markdown, with the paper's column when ``paper``."""
    header = ["RPR quantile", "n", "RPR range", "mean Dice"] + (["paper"] if paper else [])
    body: list[list[Any]] = []
    for row in rows:
        line: list[Any] = [
            row.name,
            row.n,
            f"{row.rpr_range[0]:.4g}-{row.rpr_range[1]:.4g}",
            row.mean_dice,
        ]
        if paper:
            line.append(PAPER_TABLE2[row.name])
        body.append(line)
    return markdown_table(header, body)


def spearman(rpr: Sequence[float], dice: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation of RPR and Dice, with its two-sided p-value (scipy)."""
    from scipy.stats import spearmanr

    r, d = np.asarray(rpr, dtype=float), np.asarray(dice, dtype=float)
    if r.size < 3 or np.ptp(r) == 0 or np.ptp(d) == 0:
        return float("nan"), float("nan")
    res = spearmanr(r, d)
    return float(res.statistic), float(res.pvalue)


def scatter_plot(
    path: Path, rpr: Sequence[float], dice: Sequence[float], title: str, folds: Sequence[int]
) -> Path:
    """Figure 4: Dice against RPR, one point per sample, coloured by fold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    sc = ax.scatter(rpr, dice, c=list(folds), cmap="tab10", s=18, vmin=0, vmax=9)
    ax.set_xlabel("RPR (k = 10)")
    ax.set_ylabel("CNN Dice score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(*sc.legend_elements(), title="fold", fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def per_fold_markdown(rows: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, float]]]:
    """Mean RPR, mean Dice and Spearman's ρ within each fold's model.

    RPR values of different models are on different scales, so a correlation pooled over folds
    (as in Table 2) mixes "this model is worse" with "this sample is harder"; this table
    separates the two.

    Args:
        rows: samples with ``fold``, ``rpr`` and ``dice`` keys.

    Returns:
        ``(markdown, records)`` with one record per fold.
    """
    records = []
    for fold in sorted({int(r["fold"]) for r in rows}):
        sub = [r for r in rows if int(r["fold"]) == fold]
        rr, dd = [r["rpr"] for r in sub], [r["dice"] for r in sub]
        rho, p = spearman(rr, dd)
        records.append(
            dict(fold=fold, n=len(sub), mean_rpr=float(np.mean(rr)),
                 mean_dice=float(np.mean(dd)), spearman=rho, p_value=p)
        )  # fmt: skip
    header = ["fold", "n", "mean RPR", "mean Dice", "Spearman", "p"]
    table = markdown_table(header, [list(r.values()) for r in records])
    return table, records
