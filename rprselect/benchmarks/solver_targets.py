"""Judging ``rprselect bench solvers``: targets P1-P4 from the run's own ratios, the report and
the plot.

Every verdict compares rows of one run (side by side on the same machine and load):

* P1: at the ``--pool-size`` edge, for random and for trained weights, the best converged
  configuration with |ΔRPR| <= 1e-3 is >= 5x faster than the paper's method; and (per 3-D case)
  our Lanczos (b = 1) takes <= 0.8x SLEPc ``cross``'s wall time on the same explicit-adjoint
  operator, with at most its products;
* P2: MNIST, RPR and LPR of 10 000 images in <= 4x one SGD epoch (and the per-image ratio
  against the reference);
* P3: the ranking mode (:class:`~rprselect.solvers.ranking.RankStop`) against the tol ranking:
  Spearman >= 0.99, the same top 10 %, <= 40 % of the products; wall time against MC dropout;
* P4: peak memory of the rank-k Lanczos SVD <= 3x a no-grad forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rprselect.benchmarks.common import markdown_table

__all__ = ["targets", "report_markdown", "plot"]


def _row(rows: list[dict[str, Any]], case: str, config: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["config"] == config), None)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _p1(rows: list[dict[str, Any]], case: str) -> dict[str, Any]:
    ran = [r for r in rows if r["case"] == case and r["config"] != "reference"]
    ran = [r for r in ran if r["status"] == "ok" and "speedup" in r]
    good = [r for r in ran if r["converged"] and r.get("d_rpr", np.inf) <= 1e-3]
    best = max(good, key=lambda r: r["speedup"]) if good else None
    goal = f"{case}: >= 5x faster than reference, abs ΔRPR <= 1e-3"
    if best is None:
        return {"id": "P1", "goal": goal, "measured": "no reference or no converged run",
                "ok": None}  # fmt: skip
    what = f"{best['speedup']:.2f}x ({best['config']}, abs ΔRPR {best['d_rpr']:.1e})"
    fast = max(ran, key=lambda r: r["speedup"])
    if fast is not best:  # say why the fastest run does not count
        why = (f"abs ΔRPR {fast.get('d_rpr', np.nan):.1e} > 1e-3" if fast["converged"] else
               f"max residual {fast.get('max_residual', np.nan):.1e} > tol")  # fmt: skip
        what += f"; fastest {fast['config']} {fast['speedup']:.2f}x but {why}"
    return {"id": "P1", "goal": goal, "measured": what, "ok": best["speedup"] >= 5,
            "ratio": best["speedup"]}  # fmt: skip


def _lanczos_vs_slepc(rows: list[dict[str, Any]], case: str) -> dict[str, Any] | None:
    ours, slepc = _row(rows, case, "lanczos-b1"), _row(rows, case, "slepc-cross")
    if ours is None or slepc is None:
        return None
    goal = f"{case}: lanczos-b1 <= 0.8x slepc-cross wall, products <= slepc's"
    if ours["status"] != "ok" or slepc["status"] != "ok":
        return {"id": "P1-L", "goal": goal, "measured": "one of them did not run", "ok": None}
    r = ours["seconds"] / slepc["seconds"]
    what = (f"{r:.2f}x wall ({ours['seconds']:.1f} s vs {slepc['seconds']:.1f} s), products "
            f"{ours['products']} vs {slepc['products']}")  # fmt: skip
    ok = r <= 0.8 and ours["products"] <= slepc["products"] and bool(ours["converged"])
    return {"id": "P1-L", "goal": goal, "measured": what, "ok": ok, "ratio": r}


def targets(results: dict[str, Any], args: Any) -> list[dict[str, Any]]:
    """P1-P4 judged from the run's own ratios; ``ok`` is None when a part did not run."""
    rows, out = results.get("rows", []), []
    size = args.pool_size
    cases = list(dict.fromkeys(r["case"] for r in rows if r["case"].startswith("unet")))
    p1_cases = [c for c in cases if c.split("-")[0] == f"unet{size}"] or [f"unet{size}"]
    out += [_p1(rows, c) for c in p1_cases]
    out += [t for t in (_lanczos_vs_slepc(rows, c) for c in cases) if t is not None]
    p2, mref = results.get("p2"), _row(rows, "mnist", "reference")
    goal2 = "MNIST RPR+LPR ranks 1..k: <= 4x one epoch (and the ratio to the reference)"
    if p2:
        r2 = p2["scoring_seconds"] / p2["epoch_seconds"]
        what = f"{r2:.2f}x one epoch"
        entry: dict[str, Any] = {"ratio_epoch": r2}
        if mref and mref["status"] == "ok":
            per_image = mref["seconds"] / mref["n_samples"]
            r1 = per_image * p2["images"] / p2["scoring_seconds"]
            what += f"; {r1:.0f}x the reference ({per_image:.3f} s/image)"
            entry["ratio_reference"] = r1
        out.append({"id": "P2", "goal": goal2, "measured": what, "ok": r2 <= 4, **entry})
    else:
        out.append({"id": "P2", "goal": goal2, "measured": "P2 did not run", "ok": None})
    vol = results.get("throughput", {}).get("volumes")
    goal3 = "ranking mode: Spearman >= 0.99, same top 10%, <= 40% of the tol products"
    if vol:
        rho, top = vol["spearman_rank_vs_tol"], vol["same_top10"]
        share = vol["rank_products"] / max(vol["rpr_products"], 1e-12)
        r = vol["rank_seconds"] / vol["mc_seconds"]
        what = (f"Spearman {rho:.3f}, top 10% {'same' if top else 'differs'}, {share:.0%} "
                f"of the products; wall {r:.2f}x MC dropout T={args.mc_passes}")  # fmt: skip
        out.append({"id": "P3", "goal": goal3, "measured": what,
                    "ok": rho >= 0.99 and top and share <= 0.4, "ratio_products": share,
                    "ratio_mc": r})  # fmt: skip
    else:
        out.append({"id": "P3", "goal": goal3, "measured": "throughput did not run", "ok": None})
    goal4 = f"unet{size}: Lanczos SVD peak <= 3x no-grad forward peak"
    # the leanest Lanczos row that is still right: converged, |ΔRPR| <= 1e-3
    pick = [r for r in rows if r["case"] == f"unet{size}" and r["config"].startswith("lanczos")]
    pick = [r for r in pick if r["status"] == "ok" and r.get("forward_peak_bytes")
            and r["converged"] and r.get("d_rpr", 0.0) <= 1e-3]  # fmt: skip
    if pick:
        q = min(pick, key=lambda r: r["peak_bytes"] / r["forward_peak_bytes"])
        r = q["peak_bytes"] / q["forward_peak_bytes"]
        what = (f"{r:.2f}x ({q['config']}: {q['peak_bytes'] / 2**20:.0f} MiB vs forward "
                f"{q['forward_peak_bytes'] / 2**20:.0f} MiB)")  # fmt: skip
        out.append({"id": "P4", "goal": goal4, "measured": what, "ok": r <= 3, "ratio": r})
    else:
        out.append({"id": "P4", "goal": goal4, "measured": "no run at this size", "ok": None})
    return out


def _mib(v: Any) -> Any:
    return "" if v is None else float(v) / 2**20


def report_markdown(results: dict[str, Any], args: Any) -> str:
    """The Markdown report: solver table, P2, pool throughput, trace once and the targets."""
    s = results["settings"]
    weights = s.get("weights") or "none"
    lines = [
        "# rprselect bench solvers",
        "",
        f"Machine: {results['machine']}; torch threads {s['threads']}; load average "
        f"{results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after "
        f"(shared machine: every ratio comes from this one run). Total {results['seconds']:.0f} s.",
        f"k = {s['k']}, tol = {s['tol']}; PocketUNet(C, 2, dims=3, depth={s['depth']}, "
        f"filters={s['filters']}): `unetN` random weights (seed {s['seed']}) on synthetic "
        f"4-channel brains, `unetN-trained` the trained weights ({weights}) on 2-channel crops "
        "of the shared BraTS cases; MNISTNet after one training epoch.",
    ]
    lines += [f"Note: {n}" for n in results["notes"] + ([s["note"]] if s["note"] else [])]
    head = ["case", "config", "wall s", "speed-up", "products/sample", "passes", "max residual",
            "max abs ΔRPR", "max rel ΔRPR", "peak MiB", "forward MiB", "status"]  # fmt: skip
    body = []
    for r in results.get("rows", []):
        ok = r["status"] == "ok"
        body.append([
            r["case"], r["config"], r.get("seconds", ""), r.get("speedup", ""),
            r.get("products", ""), r.get("passes", ""), r.get("max_residual", ""),
            r.get("d_rpr", ""), r.get("d_rpr_rel", ""), _mib(r.get("peak_bytes")),
            _mib(r.get("forward_peak_bytes")),
            ("ok" if r.get("converged") else "not converged") if ok else
            f"{r['status']}: {r['reason']}",
        ])  # fmt: skip
    if body:
        lines += ["", "## Solvers", "", markdown_table(head, body)]
    p2 = results.get("p2")
    if p2:
        lines += ["", "## P2: MNIST, RPR and LPR for ranks 1..k", "",
                  f"{p2['images']} images ({p2['source']}): one training epoch (batch 32, SGD) "
                  f"{p2['epoch_seconds']:.1f} s; scoring {p2['scoring_seconds']:.1f} s "
                  f"({p2['solver']}, max residual {p2['max_residual']:.1e})."]  # fmt: skip
    tput = results.get("throughput")
    if tput:
        lines += _throughput_tables(tput, s)
    lines += [
        "",
        "## Targets",
        "",
        markdown_table(
            ["target", "goal", "measured", "verdict"],
            [[t["id"], t["goal"], t["measured"], _verdict(t["ok"])] for t in results["targets"]],
        ),
    ]
    return "\n".join(lines) + "\n"


def _throughput_tables(tput: dict[str, Any], s: dict[str, Any]) -> list[str]:
    mn, vo = tput["mnist"], tput["volumes"]
    rows = [
        [mn["pool"], f"RPR, tol {s['tol']}", mn["rpr_seconds"], mn["n"] / mn["rpr_seconds"],
         mn["rpr_products"], ""],
        [mn["pool"], f"MC dropout T={s['mc_passes']}", mn["mc_seconds"],
         mn["n"] / mn["mc_seconds"], "", ""],
        [vo["pool"], f"RPR, tol {s['tol']}", vo["rpr_seconds"], vo["n"] / vo["rpr_seconds"],
         vo["rpr_products"], 1.0],
        [vo["pool"], f"ranking mode, RankStop(δ={vo['rank_delta']})", vo["rank_seconds"],
         vo["n"] / vo["rank_seconds"], vo["rank_products"], vo["spearman_rank_vs_tol"]],
        [vo["pool"], f"MC dropout T={s['mc_passes']}", vo["mc_seconds"],
         vo["n"] / vo["mc_seconds"], "", ""],
    ]  # fmt: skip
    out = [
        "",
        "## Pool throughput",
        "",
        markdown_table(
            ["pool", "method", "wall s", "samples/s", "products/sample", "Spearman vs tol"], rows
        ),
        "",
        f"Ranking mode: same top 10% as the tol ranking: {vo['same_top10']}; largest certified "
        f"half-width {vo['rank_max_half_width']:.1e}; max |ΔRPR| against tol "
        f"{vo['max_abs_rpr_rank']:.1e}; stops {vo['rank_stop']}."
        + (
            f" Each volume's own certificate came at {vo['rank_volume_products']:.1f} products "
            f"on average ({vo['rank_volume_products'] / max(vo['rpr_products'], 1e-12):.0%} of "
            "the tol products): the rest is the lockstep batch waiting for its slowest volume."
            if "rank_volume_products" in vo
            else ""
        ),
    ]
    trace = [tput[key] for key in ("trace_once_mnist", "trace_once_volumes") if key in tput]
    if trace:
        body = [[t["pool"], t["batches"], t["fresh_seconds"], t["traces_fresh"],
                 t["once_seconds"], t["traces_once"], t["ratio"], t["same_rpr"]]
                for t in trace]  # fmt: skip
        out += [
            "",
            "## Trace once: pool scoring before (a trace per batch) and after (one graph)",
            "",
            markdown_table(
                [
                    "pool",
                    "batches",
                    "trace per batch s",
                    "traces",
                    "traced once s",
                    "traces",
                    "speed-up",
                    "same RPR",
                ],
                body,
            ),  # fmt: skip
        ]
    return out


def plot(results: dict[str, Any], path: Path, configs: list[str]) -> None:
    """``solvers.png``: wall time per configuration and case (log scale), and pool samples/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("rows", []) if r["status"] == "ok"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(configs))
    for j, name in enumerate(configs):
        found = [(i, _row(rows, c, name)) for i, c in enumerate(cases)]
        got = [(i, r) for i, r in found if r is not None]
        if got:
            axes[0].bar([i + j * width for i, _ in got], [r["seconds"] for _, r in got], width,
                        label=name)  # fmt: skip
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("wall seconds (k=10)")
    axes[0].legend(fontsize=7)
    tput = results.get("throughput")
    if tput:
        vo = tput["volumes"]
        names = ["RPR tol", "ranking mode", "MC dropout"]
        secs = [vo["rpr_seconds"], vo["rank_seconds"], vo["mc_seconds"]]
        axes[1].bar(names, [vo["n"] / t for t in secs])
        axes[1].set_title(vo["pool"], fontsize=9)
        axes[1].set_ylabel("samples / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
