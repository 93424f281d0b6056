"""Statistics, tables and plots of the active-learning benchmark.

Per unit (strategy, seed, budget) the area under the learning curve is normalised by the span
of labelled-set sizes,

.. math:: \\mathrm{AUC} = \\frac{1}{n_R - n_0} \\int_{n_0}^{n_R} \\mathrm{acc}(n)\\,dn
    \\in [0, 1]\\quad\\text{(trapezoid rule)},

and the same for the rare classes' mean recall. Across seeds: the mean with a 95% Student-t
interval, paired two-sided Wilcoxon signed-rank tests against ``random`` and ``margin`` (seeds
are paired: same pool, start set and first model), and the pairwise penalty matrix of Ash et
al. (BADGE, ICLR 2020): for every round ``r >= 1`` and pair ``(i, j)``, a paired two-sided t-test
over seeds of :math:`\\mathrm{acc}_i - \\mathrm{acc}_j`; when it is significant at 5% in ``i``'s
favour, :math:`P_{ij} \\mathrel{+}= 1/R`. Entries are summed over budgets (and data sets), so
:math:`P_{ij}` counts, in budgets, how often ``i`` beat ``j``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import markdown_table

__all__ = [
    "auc",
    "mean_ci",
    "wilcoxon_p",
    "penalty_matrix",
    "summarise",
    "budget_table",
    "penalty_table",
    "mean_rank",
    "plot_curves",
]


def auc(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` against ``sizes``, divided by the span of sizes."""
    n, a = np.asarray(sizes, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if len(n) < 2 or n[-1] == n[0]:
        return float(a.mean())
    return float(np.sum(0.5 * (a[1:] + a[:-1]) * np.diff(n)) / (n[-1] - n[0]))


def mean_ci(v: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% Student-t interval (NaN-free values)."""
    from scipy.stats import t

    a = np.asarray(v, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(a.mean())
    if len(a) < 2:
        return (m, m, m)
    h = float(t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))
    return (m, m - h, m + h)


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of ``a - b`` (1.0 when all differences
    are zero, NaN with fewer than 2 pairs)."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def penalty_matrix(curves: dict[str, np.ndarray]) -> np.ndarray:
    """Ash et al.'s pairwise penalty for one budget: ``curves[name]`` is ``(seeds, R + 1)``.

    Returns:
        ``(S, S)`` in the order of ``curves``; entry ``(i, j)`` is the fraction of rounds
        ``1..R`` where ``i`` beat ``j`` (paired t-test, two-sided 5%).
    """
    from scipy.stats import t as student

    names = list(curves)
    acc = np.stack([curves[n][:, 1:] for n in names])  # (S, seeds, R)
    S, n, R = acc.shape
    P = np.zeros((S, S))
    if n < 2 or R == 0:
        return P
    crit = float(student.ppf(0.975, n - 1))
    for i in range(S):
        for j in range(S):
            if i == j:
                continue
            d = acc[i] - acc[j]
            m, sd = d.mean(0), d.std(0, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                tval = np.where(sd > 0, m / (sd / math.sqrt(n)), np.where(m > 0, np.inf, 0.0))
            P[i, j] = float((tval > crit).sum()) / R
    return P


def summarise(units: dict[str, list[dict[str, Any]]], rare: Sequence[int]) -> dict[str, Any]:
    """Per strategy over seeds (one budget): AUCs with CIs, Wilcoxon p-values, queries.

    Args:
        units: ``{strategy: [unit results sorted by seed]}``, all strategies on the same seeds.
        rare: the rare classes.
    """
    out: dict[str, Any] = {}
    aucs = {s: [auc(u["n_labelled"], u["accuracy"]) for u in us] for s, us in units.items()}
    for s, us in units.items():
        rare_auc = [auc(u["n_labelled"], u["rare_recall"]) for u in us]
        q = [np.asarray(u["queried_classes"]).sum(0) for u in us]
        share = [float(c[list(rare)].sum() / max(c.sum(), 1)) for c in q]
        out[s] = {
            "seeds": [u["seed"] for u in us],
            "auc_per_seed": aucs[s],
            "rare_auc_per_seed": rare_auc,
            "auc": mean_ci(aucs[s]),
            "rare_auc": mean_ci(rare_auc),
            "final_accuracy": mean_ci([u["accuracy"][-1] for u in us]),
            "final_rare_recall": mean_ci([u["rare_recall"][-1] for u in us]),
            "rare_share": mean_ci(share),
            "query_seconds": mean_ci([float(np.mean(u["query_seconds"])) for u in us]),
            "svd_seconds": mean_ci([float(np.mean(u["svd_seconds"])) for u in us]),
            "p_vs_random": wilcoxon_p(aucs[s], aucs["random"]) if "random" in aucs else None,
            "p_vs_margin": wilcoxon_p(aucs[s], aucs["margin"]) if "margin" in aucs else None,
            "n_labelled": np.mean([u["n_labelled"] for u in us], 0).tolist(),
            "accuracy_mean": np.mean([u["accuracy"] for u in us], 0).tolist(),
            "rare_recall_mean": np.nanmean([u["rare_recall"] for u in us], 0).tolist(),
        }
    return out


def _ci(v: Sequence[float], digits: int = 3) -> str:
    m, lo, hi = v
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _p(v: float | None, diff: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f} ({'+' if diff > 0 else '-' if diff < 0 else '='})"


def budget_table(summary: dict[str, Any], groups: dict[str, str], wins: dict[str, float]) -> str:
    """Markdown: strategies by mean AUC, with CIs, p-values, rare classes, cost."""
    order = sorted(summary, key=lambda s: -summary[s]["auc"][0])
    ref = {b: summary[b]["auc"][0] if b in summary else math.nan for b in ("random", "margin")}
    rows = [
        [
            i + 1,
            s,
            groups.get(s, "RPR"),
            _ci(summary[s]["auc"]),
            _p(summary[s]["p_vs_random"], summary[s]["auc"][0] - ref["random"]),
            _p(summary[s]["p_vs_margin"], summary[s]["auc"][0] - ref["margin"]),
            _ci(summary[s]["rare_auc"]),
            f"{summary[s]['rare_share'][0]:.2f}",
            f"{summary[s]['final_accuracy'][0]:.3f}",
            f"{wins.get(s, 0.0):.2f}",
            f"{summary[s]['query_seconds'][0]:.2f}",
        ]
        for i, s in enumerate(order)
    ]
    header = [
        "rank",
        "strategy",
        "family",
        "AUC [95% CI]",
        "p vs random",
        "p vs margin",
        "rare-class AUC [95% CI]",
        "rare share of queries",
        "final acc",
        "penalty wins - losses",
        "query s/round",
    ]
    return markdown_table(header, rows)


def penalty_table(names: Sequence[str], P: np.ndarray) -> str:
    """Markdown of the penalty matrix, rows = winner, columns = loser, plus the column mean."""
    short = [n[:14] for n in names]
    rows = [[names[i], *[f"{P[i, j]:.1f}" for j in range(len(names))]] for i in range(len(names))]
    rows.append(
        ["column mean (lower = better)", *[f"{P[:, j].mean():.2f}" for j in range(len(names))]]
    )
    return markdown_table(["i beats j", *short], rows)


def mean_rank(scores: dict[str, list[float]]) -> dict[str, float]:
    """Mean over cells of each strategy's rank (1 = highest score; ties get their mean rank).

    Args:
        scores: ``{strategy: [score in cell 1, cell 2, ...]}``, the same cells for all.
    """
    from scipy.stats import rankdata

    names = list(scores)
    mat = np.asarray([scores[n] for n in names], dtype=np.float64)  # (S, cells)
    ranks = np.stack([rankdata(-mat[:, c], method="average") for c in range(mat.shape[1])], 1)
    return {n: float(ranks[i].mean()) for i, n in enumerate(names)}


def plot_curves(summary: dict[str, Any], key: str, ylabel: str, path: Path, title: str) -> None:
    """Mean learning curves of every strategy (solid: RPR family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in summary.items():
        style = "--" if name in ("random", "margin") else "-"
        ax.plot(s["n_labelled"], s[f"{key}_mean"], style, marker="o", ms=2, lw=1, label=name)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_penalty(names: Sequence[str], P: np.ndarray, path: Path) -> None:
    """Heat map of the penalty matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.35 * len(names) + 3, 0.35 * len(names) + 2))
    im = ax.imshow(P, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xlabel("loser j")
    ax.set_ylabel("winner i")
    fig.colorbar(im, ax=ax, label="budgets won (sum of round fractions)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
