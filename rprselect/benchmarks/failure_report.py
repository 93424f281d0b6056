"""Tables, verdicts and plots of the failure-prediction benchmark (see ``failure_prediction``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rprselect.benchmarks.brats_analysis import quantile_markdown, quantile_table, spearman
from rprselect.benchmarks.common import markdown_table
from rprselect.benchmarks.failure_metrics import (
    auroc,
    bootstrap_replicates,
    enrichment,
    interval,
    top_mean,
)

__all__ = ["summarise", "markdown", "is_svd", "levels", "fusion_controls", "CONTROLS"]

#: SVD-free controls named by the issue: if one matches RPR, the SVD adds nothing there
CONTROLS: tuple[str, ...] = ("output_input_ratio", "max_logit", "energy", "jacobian_frobenius")
_SVD_ONLY = ("lowest", "rank_mean", "class_conditional")
_FUSIONS = ("margin_rpr", "rank_entropy", "vim")


def is_svd(name: str) -> str:
    """``"SVD"``, ``"fusion"`` (SVD + logits), ``"control"`` (a shuffled RPR) or ``"no"``."""
    if name in _SVD_ONLY or name.startswith("rpr@"):
        return "SVD"
    if name == "margin_shuffled_rpr":
        return "control"
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


def fusion_controls(res: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """SVD-free and shuffled counterparts of ``margin_rpr`` (derived from the saved scores).

    With :math:`m(x) = 1 - (p_{(1)} - p_{(2)})` and :math:`\\rho_k` the RPR at rank k,
    ``margin_rpr`` is :math:`m(x)(1 - \\rho_k(x))`. Its controls replace :math:`\\rho_k` by

    - ``margin_ratio``: :math:`\\|f(x)\\|/\\|x\\|` min-max scaled to [0, 1] over the test set
      (what :math:`\\rho_C` reduces to, without the SVD);
    - ``margin_shuffled_rpr``: :math:`\\rho_k` of another sample (a random permutation), which
      keeps its distribution but breaks its link to x.
    """
    u = res["utilities"]
    m = 1.0 + np.asarray(u["margin"])
    conf = -np.asarray(u["output_input_ratio"])
    span = float(np.ptp(conf))
    scaled = (conf - conf.min()) / span if span > 0 else np.zeros_like(conf)
    rho = np.asarray(res["rpr_curve"])[:, -1]
    shuffled = np.random.default_rng(seed).permutation(rho)
    return {
        "margin_ratio": m * (1.0 - scaled),
        "margin_shuffled_rpr": m * np.clip(1.0 - shuffled, 0.0, 1.0),
    }


def _fusion_verdict(reps: dict[str, np.ndarray], points: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for other in ("margin", "margin_ratio", "margin_shuffled_rpr"):
        if "margin_rpr" in points and other in points:
            lo, hi = interval(reps["margin_rpr"] - reps[other])
            out[other] = dict(diff=points["margin_rpr"] - points[other], lo=lo, hi=hi)
    return out


def _classification(res: dict[str, Any], s: dict[str, Any], default: str, seed: int) -> dict:
    wrong = np.asarray(res["wrong"], dtype=bool)
    utils = dict(res["utilities"])
    if "margin_rpr" in utils:
        utils.update(fusion_controls(res, seed))
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

    def target(name: str) -> dict[str, Any]:
        d = next(r for r in rows if r["score"] == name)
        return dict(
            name="the default score's AUROC >= max-softmax's (issue 12 sets it on the MNIST "
            "unbalanced model)",
            default=name,
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
        target=target(default),
        paper_rule=target("lowest"),
        svd=_svd_verdict(reps, points),
        fusion=_fusion_verdict(reps, points),
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


def levels(units: Sequence[Any]) -> dict[str, list[Any]]:
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
    return {lvl: _level(us, results, s, seed) for lvl, us in levels(units).items()}


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
    lines = [
        f"{c['n']} test samples, {c['errors']} misclassified (base error rate "
        f'{c["error_rate"]:.3f}). AUROC for "the model is wrong here"; enrichment = error rate '
        f"among the 10% most suspicious / base rate.",
        markdown_table(header, body),
    ]
    for key, who in (("target", "the default"), ("paper_rule", "the paper's rule")):
        t = c.get(key)
        if t is None or (key == "paper_rule" and t["default"] == c["target"]["default"]):
            continue
        lines.append(
            f"Target ({t['name']}), {who}: {t['default']} {t['auroc']:.3f} vs max_softmax "
            f"{t['max_softmax']:.3f}, difference {_ci(t['diff'], t['diff_lo'], t['diff_hi'])}: "
            f"**{'met' if t['met'] else 'missed'}**."
        )
    return (
        lines
        + [
            f"SVD against the SVD-free controls ({', '.join(CONTROLS)}): {c['svd']['verdict']}.",
        ]
        + _fusion_md(c.get("fusion", {}))
    )


def _fusion_md(f: dict[str, Any]) -> list[str]:
    if not f:
        return []
    parts = [f"{k} {_ci(v['diff'], v['lo'], v['hi'])}" for k, v in f.items()]
    return [
        "Does the SVD help inside the fusion? AUROC of margin_rpr minus that of: "
        + "; ".join(parts)
        + " (margin_ratio: the margin weighted by the SVD-free ||f(x)||/||x||, min-max scaled; "
        "margin_shuffled_rpr: weighted by the RPR of a random other sample)."
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
