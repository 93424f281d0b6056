"""Tables, verdicts and plots of the failure-prediction benchmark (see ``failure_prediction``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rprselect.benchmarks.brats_analysis import quantile_markdown, quantile_table, spearman
from rprselect.benchmarks.common import markdown_table
from rprselect.benchmarks.failure_metrics import (
    auroc,
    bootstrap_replicates,
    enrichment,
    interval,
    roc_curve,
    top_mean,
)

__all__ = ["summarise", "markdown", "plot", "is_svd", "CONTROLS"]

#: SVD-free controls named by the issue: if one matches RPR, the SVD adds nothing there
CONTROLS: tuple[str, ...] = ("output_input_ratio", "max_logit", "energy", "jacobian_frobenius")
_SVD_ONLY = ("lowest", "rank_mean", "class_conditional")
_FUSIONS = ("margin_rpr", "rank_entropy", "vim")


def is_svd(name: str) -> str:
    """``"SVD"``, ``"fusion"`` (SVD + logits) or ``"no"``."""
    if name in _SVD_ONLY or name.startswith("rpr@"):
        return "SVD"
    return "fusion" if name in _FUSIONS else "no"


def _ci(point: float, lo: float, hi: float, digits: int = 3) -> str:
    if math.isnan(point):
        return "nan"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _svd_verdict(reps: dict[str, np.ndarray], points: dict[str, float]) -> dict[str, Any]:
    """Best SVD-only score against the best SVD-free control, with the paired interval."""
    svd = [n for n in points if is_svd(n) == "SVD" and not math.isnan(points[n])]
    ctl = [n for n in CONTROLS if n in points and not math.isnan(points[n])]
    if not svd or not ctl:
        return {"verdict": "not computed (no finite AUROC)"}
    best_svd = max(svd, key=lambda n: points[n])
    best_ctl = max(ctl, key=lambda n: points[n])
    diff = points[best_svd] - points[best_ctl]
    lo, hi = interval(reps[best_svd] - reps[best_ctl])
    if diff <= 0:
        verdict = f"the SVD adds nothing here: {best_ctl} does as well as or better than {best_svd}"
    elif lo <= 0:
        verdict = (
            f"the SVD adds nothing measurable here: {best_svd} beats {best_ctl} by {diff:.3f}, "
            f"but the 95% interval [{lo:.3f}, {hi:.3f}] includes 0"
        )
    else:
        verdict = f"the SVD adds {diff:.3f} [{lo:.3f}, {hi:.3f}] AUROC over {best_ctl}"
    return dict(best_svd=best_svd, best_control=best_ctl, diff=diff, lo=lo, hi=hi, verdict=verdict)


def _classification(res: dict[str, Any], s: dict[str, Any], default: str, seed: int) -> dict:
    utils, wrong = res["utilities"], np.asarray(res["wrong"], dtype=bool)
    reps = bootstrap_replicates(utils, wrong, s["n_boot"], seed)
    points = {n: auroc(u, wrong) for n, u in utils.items()}
    rows = []
    for name, u in utils.items():
        lo, hi = interval(reps[name])
        dlo, dhi = interval(reps[name] - reps["max_softmax"])
        enr = enrichment(u, wrong, 0.1)
        rows.append(
            dict(
                score=name,
                svd=is_svd(name),
                auroc=points[name],
                lo=lo,
                hi=hi,
                diff=points[name] - points["max_softmax"],
                diff_lo=dlo,
                diff_hi=dhi,
                **enr,
            )
        )
    d = next(r for r in rows if r["score"] == default)
    target = dict(
        name="the default score's AUROC >= max-softmax's (issue 12 sets it on the MNIST "
        "unbalanced model)",
        default=default,
        auroc=d["auroc"],
        max_softmax=points["max_softmax"],
        diff=d["diff"],
        diff_lo=d["diff_lo"],
        diff_hi=d["diff_hi"],
        met=bool(d["diff"] >= 0),
    )
    return dict(
        n=int(wrong.size),
        errors=int(wrong.sum()),
        error_rate=float(wrong.mean()),
        rows=rows,
        target=target,
        svd=_svd_verdict(reps, points),
    )


def _level(units: list[Any], results: dict[str, Any], s: dict[str, Any], seed: int) -> dict:
    names = list(results[units[0].name]["utilities"])
    keep = {u.name: np.asarray(results[u.name]["has_fg"], dtype=bool) for u in units}
    dice = np.concatenate([results[u.name]["dice"][keep[u.name]] for u in units])
    utils = {
        n: np.concatenate([results[u.name]["utilities"][n][keep[u.name]] for u in units])
        for n in names
    }
    if dice.size == 0:
        return {"n": 0, "rows": [], "per_unit": []}
    worst = dice <= np.quantile(dice, 0.25)
    reps = bootstrap_replicates(utils, worst, s["n_boot"], seed)
    points = {n: auroc(u, worst) for n, u in utils.items()}
    per_unit = []
    for u in units:
        d = results[u.name]["dice"][keep[u.name]]
        rec: dict[str, Any] = dict(
            unit=u.name, n=int(d.size), mean_dice=float(d.mean()) if d.size else math.nan
        )
        for n in names:
            rec[n] = spearman((-results[u.name]["utilities"][n][keep[u.name]]).tolist(), d.tolist())
        per_unit.append(rec)
    rows = []
    for n in names:
        rho, p = spearman((-utils[n]).tolist(), dice.tolist())
        within = [r[n][0] for r in per_unit if not math.isnan(r[n][0])]
        lo, hi = interval(reps[n])
        rows.append(
            dict(
                score=n,
                svd=is_svd(n),
                spearman=rho,
                p=p,
                within=float(np.mean(within)) if within else math.nan,
                auroc=points[n],
                lo=lo,
                hi=hi,
                top_dice=top_mean(utils[n], dice, 0.1),
            )
        )
    table2 = quantile_table((-utils["lowest"]).tolist(), dice.tolist())
    return dict(
        n=int(dice.size),
        mean_dice=float(dice.mean()),
        worst_quartile_dice=float(np.quantile(dice, 0.25)),
        rows=rows,
        per_unit=per_unit,
        table2=[r.__dict__ for r in table2],
        svd=_svd_verdict(reps, points),
    )


def _levels(units: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for u in units:
        level = "volumes" if u.roi_size is not None else "slices" if "_2d" in u.name else "images"
        out.setdefault(level, []).append(u)
    return out


def summarise(
    units: Sequence[Any], results: dict[str, Any], s: dict[str, Any], default: str, seed: int
) -> dict[str, Any]:
    """Every number of the report, JSON-able."""
    if s["kind"] == "classification":
        return {"classification": _classification(results[units[0].name], s, default, seed)}
    return {lvl: _level(us, results, s, seed) for lvl, us in _levels(units).items()}


def _class_md(c: dict[str, Any]) -> list[str]:
    header = [
        "score",
        "SVD",
        "AUROC [95% CI]",
        "Δ vs max_softmax [95% CI]",
        "error rate, top 10%",
        "enrichment",
    ]
    body = [
        [
            r["score"],
            r["svd"],
            _ci(r["auroc"], r["lo"], r["hi"]),
            _ci(r["diff"], r["diff_lo"], r["diff_hi"]),
            f"{r['top_rate']:.3f}",
            f"x{r['enrichment']:.2f}",
        ]
        for r in c["rows"]
    ]
    t = c["target"]
    return [
        f"{c['n']} test samples, {c['errors']} misclassified (base error rate "
        f'{c["error_rate"]:.3f}). AUROC for "the model is wrong here"; enrichment = error rate '
        f"among the 10% most suspicious / base rate.",
        markdown_table(header, body),
        f"Target ({t['name']}): {t['default']} {t['auroc']:.3f} vs max_softmax "
        f"{t['max_softmax']:.3f}, difference {_ci(t['diff'], t['diff_lo'], t['diff_hi'])}: "
        f"**{'met' if t['met'] else 'missed'}**.",
        f"SVD against the SVD-free controls ({', '.join(CONTROLS)}): {c['svd']['verdict']}.",
    ]


def _fmt_rho(v: Sequence[float]) -> str:
    return "nan" if math.isnan(v[0]) else f"{v[0]:.3f} (p={v[1]:.2g})"


def _seg_md(level: str, d: dict[str, Any], k: int) -> list[str]:
    if not d["n"]:
        return [f"## {level}", "No sample with foreground in its ground truth."]
    header = [
        "score",
        "SVD",
        "Spearman(-u, Dice) (p)",
        "mean within-model ρ",
        "AUROC worst-quartile Dice [95% CI]",
        "mean Dice, top 10%",
    ]
    body = [
        [
            r["score"],
            r["svd"],
            _fmt_rho((r["spearman"], r["p"])),
            f"{r['within']:.3f}",
            _ci(r["auroc"], r["lo"], r["hi"]),
            f"{r['top_dice']:.3f}",
        ]
        for r in d["rows"]
    ]
    show = ["lowest", "rank_mean", "max_softmax", "output_input_ratio", "jacobian_frobenius"]
    fold_body = [
        [r["unit"], r["n"], r["mean_dice"], *(_fmt_rho(r[n]) for n in show)] for r in d["per_unit"]
    ]
    from rprselect.benchmarks.brats_analysis import QuantileRow

    t2 = quantile_markdown([QuantileRow(**r) for r in d["table2"]])
    return [
        f"## {level}",
        f"{d['n']} samples with foreground in the ground truth, mean Dice {d['mean_dice']:.3f}; "
        f"worst quartile: Dice <= {d['worst_quartile_dice']:.3f}. -u is the score's "
        f"confidence, so a positive Spearman means the most suspicious samples have the lowest "
        f"Dice; for `lowest` it is Spearman(RPR@{k}, Dice).",
        markdown_table(header, body),
        f"Paper Table 2 (mean Dice by RPR@{k} quantile, pooled over models):",
        t2,
        "Within each model: Spearman(-u, Dice) (p) (`lowest`: Spearman(RPR, Dice)):",
        markdown_table(["model", "n", "mean Dice", *show], fold_body),
        f"SVD against the SVD-free controls: {d['svd']['verdict']}.",
    ]


def markdown(payload: dict[str, Any]) -> str:
    """report.md: the settings line, then the tables (printed last by the benchmark)."""
    s = payload["settings"]
    lines = [
        f"# Failure prediction: {s['data']}",
        f"k = {s['k']}, tol = {s['tol']:g}, {s['n_boot']} bootstrap resamples, seed "
        f"{s['seed']}, quick={s['quick']}. Machine: {payload['machine']}. Models: "
        + "; ".join(f"{n}: {_info(i)}" for n, i in payload["units"].items()),
    ]
    summary = payload["summary"]
    if "classification" in summary:
        lines += _class_md(summary["classification"])
    else:
        for level, d in summary.items():
            lines += _seg_md(level, d, s["k"])
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in payload["seconds"].items())
    reused = payload.get("reused_units") or []
    note = (
        f" Scores of {', '.join(reused)} reused from an earlier run (its times)." if reused else ""
    )
    lines.append(f"Time: {secs}.{note}")
    return "\n\n".join(lines) + "\n"


def _info(i: dict[str, Any]) -> str:
    keys = ("n", "train_counts", "best_val_dice", "train_seconds", "loaded", "n_train")
    return ", ".join(
        f"{k}={i[k]:.3f}" if isinstance(i.get(k), float) else f"{k}={i[k]}" for k in keys if k in i
    )


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
    for level, us in _levels(units).items():
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
