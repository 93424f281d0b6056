"""Plots of the failure-prediction benchmark: ROC curves, and score against Dice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rprselect.benchmarks.brats_analysis import spearman
from rprselect.benchmarks.failure_metrics import auroc, roc_curve
from rprselect.benchmarks.failure_report import is_svd, levels

__all__ = ["plot"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _roc_figure(
    path: Path, utils: dict[str, np.ndarray], positive: np.ndarray, title: str, names: Sequence[str]
) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=110)
    for i, n in enumerate(names):
        fpr, tpr = roc_curve(utils[n], positive)
        ax.plot(
            fpr,
            tpr,
            lw=1.4,
            color=plt.get_cmap("tab20")(i % 20),
            ls="-" if is_svd(n) != "no" else "--",
            label=f"{n} ({auroc(utils[n], positive):.3f})",
        )
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def _shown(utils: dict[str, np.ndarray], positive: np.ndarray, default: str) -> list[str]:
    ranks = [n for n in utils if n.startswith("rpr@")]
    best = max(ranks, key=lambda n: auroc(utils[n], positive)) if ranks else None
    want = [
        default,
        "lowest",
        best,
        "rank_mean",
        "class_conditional",
        "max_softmax",
        "margin",
        "output_input_ratio",
        "energy",
        "jacobian_frobenius",
        "vim",
        "margin_rpr",
    ]
    return [n for n in dict.fromkeys(want) if n is not None and n in utils]


def plot(
    out: Path, units: Sequence[Any], results: dict[str, Any], s: dict[str, Any], default: str
) -> dict[str, str]:
    """ROC curves (and score against Dice for segmentation); returns name -> file."""
    if s["kind"] == "classification":
        r = results[units[0].name]
        wrong = np.asarray(r["wrong"], dtype=bool)
        title = f"{s['data']}: ROC for 'the model is wrong here'"
        shown = _shown(r["utilities"], wrong, default)
        return {"roc": _roc_figure(out / "roc.png", r["utilities"], wrong, title, shown)}
    figures: dict[str, str] = {}
    for level, us in levels(units).items():
        keep = [np.asarray(results[u.name]["has_fg"], dtype=bool) for u in us]
        dice = np.concatenate([results[u.name]["dice"][m] for u, m in zip(us, keep, strict=True)])
        if dice.size < 2:
            continue
        utils = {
            n: np.concatenate(
                [results[u.name]["utilities"][n][m] for u, m in zip(us, keep, strict=True)]
            )
            for n in results[us[0].name]["utilities"]
        }
        worst = dice <= np.quantile(dice, 0.25)
        figures[f"roc_{level}"] = _roc_figure(
            out / f"roc_worst_quartile_{level}.png",
            utils,
            worst,
            f"{level}: ROC for 'Dice in the worst quartile'",
            _shown(utils, worst, default),
        )
        unit_of = np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(keep)])
        figures[f"scatter_{level}"] = _scatter(
            out / f"score_vs_dice_{level}.png", utils, dice, unit_of, s["k"], level
        )
    return figures


def _scatter(
    path: Path,
    utils: dict[str, np.ndarray],
    dice: np.ndarray,
    unit_of: np.ndarray,
    k: int,
    level: str,
) -> str:
    plt = _pyplot()
    panels = [
        ("lowest", f"RPR@{k}"),
        ("rank_mean", "mean RPR, ranks 1..k"),
        ("max_softmax", "mean max softmax"),
        ("output_input_ratio", "||f(x)|| / ||x||"),
        ("jacobian_frobenius", "Hutchinson ||A[x]||_F^2"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), dpi=100)
    for ax, (name, label) in zip(axes, panels, strict=True):
        conf = -utils[name]
        ax.scatter(conf, dice, c=unit_of, cmap="tab10", s=10, vmin=0, vmax=9)
        rho, p = spearman(conf.tolist(), dice.tolist())
        ax.set(xlabel=label, title=f"ρ = {rho:.2f} (p = {p:.2g})")
        if name == "jacobian_frobenius":
            ax.set_xscale("log")
    axes[0].set_ylabel(f"Dice ({level})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
