"""Solver cost against the paper's SLEPc method, and pool throughput (``rprselect bench solvers``).

Every configuration runs side by side in one invocation, each in a fresh subprocess (so that its
peak memory is its own), on the same model and samples:

* ``reference``: the paper's method, SLEPc ``cross`` on a shell matrix whose products are
  autograd JVP/VJP, one vector per network pass (:mod:`rprselect.benchmarks.reference`);
* ``slepc-cross``, ``slepc-trlanczos``: SLEPc on rprselect's explicit-adjoint operator;
* ``lanczos-b1`` and the block variants ``lanczos-b4/b8/b16`` (all samples in each pass);
* ``dense``: the exact path, where ``min(m, n)`` products fit in one pass.

Columns: wall seconds, single-vector products per sample, batched network passes, max residual,
max |ΔRPR| against the reference, and peak memory: on CPU the rise of the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the RSS before the step, on GPU
``torch.cuda.max_memory_allocated``. The pool part (:mod:`rprselect.benchmarks.throughput`)
times scoring against MC-dropout entropy; targets P1-P4 are judged from ratios of the same run.

Run ``rprselect bench solvers --out DIR`` or ``python -m rprselect.benchmarks.solvers``.
Outputs: ``results.json``, ``report.md`` (printed last) and ``solvers.png``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rprselect.benchmarks import throughput as tp
from rprselect.benchmarks.common import machine_description, out_dir, write_json

__all__ = ["CONFIGS", "SMOKE", "Case", "add_arguments", "main", "run", "run_config"]

#: configuration -> what it is
CONFIGS: dict[str, str] = {
    "reference": "paper: SLEPc cross, autograd JVP/VJP, 1 vector per pass",
    "slepc-cross": "SLEPc cross on the explicit-adjoint operator",
    "slepc-trlanczos": "SLEPc trlanczos on the explicit-adjoint operator",
    "lanczos-b1": "rprselect Lanczos, block size 1",
    "lanczos-b2": "rprselect block Lanczos, b = 2 (two vectors: oneDNN on CPU)",
    "lanczos-b4": "rprselect block Lanczos, b = 4",
    "lanczos-b8": "rprselect block Lanczos, b = 8",
    "lanczos-b16": "rprselect block Lanczos, b = 16",
    "dense": "exact: A[x] materialised from its smaller side, LAPACK",
}

#: what ``--smoke`` (alias ``--quick``) changes: seconds instead of an hour
SMOKE: dict[str, Any] = {
    "sizes": "mnist,8",
    "configs": "reference,slepc-cross,lanczos-b1,lanczos-b4,dense",
    "mnist_images": 4,
    "p2_images": 64,
    "throughput_mnist": 16,
    "pool_volumes": 2,
    "pool_size": 8,
    "pool_batch": 2,
    "depth": 2,
    "filters": 4,
    "mc_passes": 3,
    "dense_limit": 64,
    "in_process": True,
}


@dataclass(frozen=True)
class Case:
    """One model and its samples: ``mnist`` (MNISTNet on images) or ``unet`` (PocketUNet)."""

    name: str
    model: str
    size: int
    n_samples: int
    depth: int = 4
    filters: int = 8


# -- building a case (deterministic, so every subprocess sees the same model and samples) --------
def build_case(case: Case, seed: int, weights: str | None, data_dir: str | None) -> tuple[Any, Any]:
    """``(model, X)`` of a case, in eval mode."""
    from rprselect.models import MNISTNet, PocketUNet

    torch.manual_seed(seed)
    model: torch.nn.Module
    if case.model == "mnist":
        model = MNISTNet(dropout=0.25)
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        X = tp.mnist_images(case.n_samples, data_dir, seed)[0]
    else:
        model = PocketUNet(4, 2, dims=3, depth=case.depth, filters=case.filters)
        X = tp.brain_volumes(case.n_samples, case.size, seed=seed)
    return model.eval(), X


# -- memory --------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory above a baseline: CPU peak RSS (VmHWM reset per step), or CUDA allocations."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.base = 0
        self.exact = self.cuda

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:  # hand freed heap back so that the baseline is what is live
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.exact = True
        except OSError:  # peak since process start instead
            self.exact = False
        self.base = _proc_status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - self.base)
        return max(0, _proc_status("VmHWM") - self.base)


def _proc_status(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# -- one configuration on one case ---------------------------------------------------------------
def run_config(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one configuration on one case; the row of the table as a dict.

    ``spec`` holds ``case`` (a :class:`Case` as a dict), ``config``, ``k``, ``tol``, ``seed``,
    ``device``, ``threads``, ``weights``, ``data_dir`` and ``dense_limit``.
    """
    case, name = Case(**spec["case"]), spec["config"]
    row: dict[str, Any] = {"case": case.name, "config": name, "status": "ok", "reason": ""}
    torch.set_num_threads(int(spec["threads"]))
    dev = torch.device(spec["device"])
    model, X = build_case(case, spec["seed"], spec.get("weights"), spec.get("data_dir"))
    model, X = model.to(dev), X.to(dev)
    mem = PeakMemory(spec["device"])
    mem.reset()
    with torch.no_grad():  # the single no-grad forward of P4; also warms the kernels up
        out = model(X)
    row["forward_peak_bytes"] = mem.peak()
    m, n = int(np.prod(out.shape[1:])), int(np.prod(X.shape[1:]))
    row.update(m=m, n=n, n_samples=int(X.shape[0]))
    del out
    skip = _why_skip(name, m, n, spec)
    if skip:
        row.update(status="skipped", reason=skip)
        return row
    if name == "reference":  # first-call cost of torch.func is not charged to the paper
        from rprselect.benchmarks.reference import AutogradShell

        sh = AutogradShell(model, X[0])
        torch.func.jvp(sh._f, (X[0],), (X[0],))
    mem.reset()
    t0 = time.perf_counter()
    res, products, passes = _solve(name, model, X, spec)
    row["seconds"] = time.perf_counter() - t0
    row["peak_bytes"], row["peak_exact"] = mem.peak(), mem.exact
    row.update(_evaluate(name, model, X, res, spec), products=products, passes=passes)
    return row


def _why_skip(name: str, m: int, n: int, spec: dict[str, Any]) -> str:
    if name != "dense":
        if name == "reference" or name.startswith("slepc"):
            try:
                from rprselect.solvers.slepc import import_slepc

                import_slepc()
            except ImportError:
                return "slepc4py is not installed (pip install 'rprselect[slepc]')"
        return ""
    r = min(m, n)
    if r > spec["dense_limit"]:
        mib = r * max(m, n) * 4 / 2**20
        return f"too large: {r} products in one pass (> --dense-limit), A[x] {mib:.0f} MiB"
    return ""


def _solve(name: str, model: Any, X: Any, spec: dict[str, Any]) -> tuple[Any, int, int]:
    """Run the solver; returns (per-sample results or a batched SVDResult, products, passes)."""
    import rprselect
    from rprselect.benchmarks.reference import reference_svd

    k, tol, B = spec["k"], spec["tol"], X.shape[0]
    if name == "reference":
        refs = [reference_svd(model, X[i], k, tol, seed=spec["seed"]) for i in range(B)]
        return refs, sum(r.n_products for r in refs) // B, sum(r.n_passes for r in refs)
    if name.startswith("slepc"):  # one sample at a time, as svd(model, x) does
        cfg = rprselect.SolverConfig(slepc_type=name.split("-", 1)[1], seed=spec["seed"])
        outs = [rprselect.svd(model, X[i], k, tol, "slepc", config=cfg) for i in range(B)]
        return outs, sum(o.n_products for o in outs) // B, sum(o.n_passes for o in outs)
    if name == "dense":
        res = rprselect.svd_batch(model, X, k, tol, "dense")
    else:
        cfg = rprselect.SolverConfig(block_size=int(name.split("-b")[1]), seed=spec["seed"])
        res = rprselect.svd_batch(model, X, k, tol, "lanczos", config=cfg)
    return res, res.n_products, res.n_passes


def _evaluate(name: str, model: Any, X: Any, res: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """RPR for ranks 1..k, singular values and residuals (measured anew for the reference)."""
    import rprselect
    from rprselect.solvers import measured_residuals

    if name == "reference":
        S = torch.from_numpy(np.stack([r.S for r in res]))
        U = torch.from_numpy(np.stack([r.U for r in res]))
        V = torch.from_numpy(np.stack([r.V for r in res]))
        with torch.no_grad():
            op = rprselect.linearize_batch(model, X)
            resid = measured_residuals(op, U, S.nan_to_num(0.0), V)
        resid[S.isnan()] = float("inf")
        Vx = V.reshape(X.shape[0], S.shape[1], -1)
        c = (Vx * X.reshape(X.shape[0], 1, -1).double().cpu()).sum(-1)
        rpr = c.pow(2).cumsum(-1) / X.double().cpu().reshape(X.shape[0], -1).pow(2).sum(-1)[:, None]
    elif isinstance(res, list):
        S = torch.stack([r.S.double().cpu() for r in res])
        resid = torch.stack([r.residuals.double().cpu() for r in res])
        rpr = torch.stack([rprselect.rpr(r, X[i]).cpu() for i, r in enumerate(res)])
    else:
        S, resid, rpr = res.S.double().cpu(), res.residuals.double().cpu(), rprselect.rpr(res, X)
    return {
        "max_residual": float(resid.max()),
        "converged": bool((resid <= spec["tol"]).all()),
        "rpr": rpr.cpu().tolist(),
        "singular_values": S.tolist(),
    }


# -- running the configurations ------------------------------------------------------------------
def _run_isolated(spec: dict[str, Any], work: Path, timeout: float | None) -> dict[str, Any]:
    """:func:`run_config` in a fresh Python process, so its peak memory is its own."""
    tag = f"{spec['case']['name']}_{spec['config']}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.row.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "rprselect.benchmarks.solvers",
        "--worker",
        str(spec_path),
        str(out_path),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"ran past --config-timeout {timeout:.0f} s"}
    if proc.returncode != 0 or not out_path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "reason": f"exit {proc.returncode}: {tail[0][:300]}"}
    row: dict[str, Any] = json.loads(out_path.read_text())
    return row


def run_cases(
    cases: list[Case], configs: list[str], skips: set[str], base: dict[str, Any], args: Any
) -> list[dict[str, Any]]:
    """Every configuration on every case; adds |ΔRPR| and the speed-up against the reference."""
    rows: list[dict[str, Any]] = []
    work = out_dir(Path(args.out) / "work")
    for case in cases:
        ref = None
        for name in configs:
            spec = {**base, "case": asdict(case), "config": name}
            print(f"[bench solvers] {case.name} / {name} ...", flush=True)
            if f"{case.name}:{name}" in skips or f"{case.size}:{name}" in skips:
                row = {"status": "skipped", "reason": "left out by --skip (time budget)"}
            elif args.in_process:
                row = run_config(spec)
            else:
                row = _run_isolated(spec, work, args.config_timeout)
            row.update(case=case.name, config=name)
            if name == "reference" and row["status"] == "ok":
                ref = row
            _compare(row, ref)
            print(
                f"    {row['status']} {row.get('seconds', 0.0):.2f} s {row['reason']}", flush=True
            )
            rows.append(row)
    return rows


def _compare(row: dict[str, Any], ref: dict[str, Any] | None) -> None:
    if row["status"] != "ok" or ref is None:
        return
    a, b = np.asarray(row["rpr"]), np.asarray(ref["rpr"])
    row["d_rpr"] = float(np.abs(a - b).max())
    row["d_rpr_rel"] = float((np.abs(a - b) / np.abs(b).clip(1e-300)).max())
    row["speedup"] = ref["seconds"] / max(row["seconds"], 1e-12)


# -- targets and report ---------------------------------------------------------------------------
def _row(rows: list[dict[str, Any]], case: str, config: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["config"] == config), None)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets(results: dict[str, Any], args: Any) -> list[dict[str, Any]]:
    """P1-P4 judged from the run's own ratios; ``ok`` is None when a part did not run."""
    rows, out = results.get("rows", []), []
    case = f"unet{args.pool_size}"
    ran = [r for r in rows if r["case"] == case and r["config"] != "reference"]
    ran = [r for r in ran if r["status"] == "ok" and "speedup" in r]
    ours = [r for r in ran if r["converged"]]
    good = [r for r in ours if r.get("d_rpr", np.inf) <= 1e-3]
    best = max(good, key=lambda r: r["speedup"]) if good else None
    p1 = None if best is None else best["speedup"] >= 5
    what = "no reference or no converged run" if best is None else (
        f"{best['speedup']:.2f}x ({best['config']}, abs ΔRPR {best['d_rpr']:.1e})")  # fmt: skip
    fast = max(ran, key=lambda r: r["speedup"]) if ran else None
    if fast is not None and fast is not best:  # say why the fastest run does not count
        why = (f"abs ΔRPR {fast.get('d_rpr', np.nan):.1e} > 1e-3" if fast["converged"] else
               f"max residual {fast.get('max_residual', np.nan):.1e} > tol")  # fmt: skip
        what += f"; fastest {fast['config']} {fast['speedup']:.2f}x but {why}"
    out.append({"id": "P1", "goal": f"{case}: >= 5x faster than reference, abs ΔRPR <= 1e-3",
                "measured": what, "ok": p1})  # fmt: skip
    p2, mref = results.get("p2"), _row(rows, "mnist", "reference")
    if p2 and mref and mref["status"] == "ok":
        per_image = mref["seconds"] / mref["n_samples"]
        r1 = per_image * p2["images"] / p2["scoring_seconds"]
        r2 = p2["scoring_seconds"] / p2["epoch_seconds"]
        what = (f"{r1:.0f}x vs reference ({per_image:.3f} s/image over {mref['n_samples']}); "
                f"{r2:.2f}x one epoch")  # fmt: skip
        out.append({"id": "P2", "goal": ">= 500x reference and <= 4x one epoch",
                    "measured": what, "ok": r1 >= 500 and r2 <= 4,
                    "ratio_reference": r1, "ratio_epoch": r2})  # fmt: skip
    else:
        out.append({"id": "P2", "goal": ">= 500x reference and <= 4x one epoch",
                    "measured": "P2 or the MNIST reference did not run", "ok": None})  # fmt: skip
    vol = results.get("throughput", {}).get("volumes")
    if vol:
        rho, r = vol["spearman_cheap_vs_tol"], vol["cheap_seconds"] / vol["mc_seconds"]
        out.append({"id": "P3", "goal": "cheap mode: Spearman >= 0.99, <= 2x MC dropout",
                    "measured": f"Spearman {rho:.3f}, {r:.2f}x MC dropout T={args.mc_passes}",
                    "ok": rho >= 0.99 and r <= 2, "ratio_mc": r})  # fmt: skip
    else:
        out.append({"id": "P3", "goal": "cheap mode: Spearman >= 0.99, <= 2x MC dropout",
                    "measured": "throughput did not run", "ok": None})  # fmt: skip
    pick = best or (min(ours, key=lambda r: r["peak_bytes"]) if ours else None)
    if pick and pick.get("forward_peak_bytes"):
        r = pick["peak_bytes"] / pick["forward_peak_bytes"]
        low = min(ran or ours, key=lambda q: q["peak_bytes"])
        what = (f"{r:.2f}x ({pick['config']}: {pick['peak_bytes'] / 2**20:.0f} MiB vs forward "
                f"{pick['forward_peak_bytes'] / 2**20:.0f} MiB); lowest {low['config']} "
                f"{low['peak_bytes'] / low['forward_peak_bytes']:.2f}x")  # fmt: skip
        out.append({"id": "P4", "goal": f"{case}: SVD peak <= 3x no-grad forward peak",
                    "measured": what, "ok": r <= 3, "ratio": r})  # fmt: skip
    else:
        out.append({"id": "P4", "goal": f"{case}: SVD peak <= 3x no-grad forward peak",
                    "measured": "no run at this size", "ok": None})  # fmt: skip
    return out


def _mib(v: Any) -> Any:
    return "" if v is None else float(v) / 2**20


def report_markdown(results: dict[str, Any], args: Any) -> str:
    """The Markdown report: solver table, P2, pool throughput and the targets."""
    from rprselect.benchmarks.common import markdown_table

    s = results["settings"]
    lines = [
        "# rprselect bench solvers",
        "",
        f"Machine: {results['machine']}; torch threads {s['threads']}; load average "
        f"{results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after "
        f"(shared machine: every ratio comes from this one run). Total {results['seconds']:.0f} s.",
        f"k = {s['k']}, tol = {s['tol']}; PocketUNet(4, 2, dims=3, depth={s['depth']}, "
        f"filters={s['filters']}), random weights (seed {s['seed']}), synthetic brain volumes; "
        "MNISTNet after one training epoch.",
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
        mn, vo = tput["mnist"], tput["volumes"]
        rows = [
            [mn["pool"], f"RPR, tol {s['tol']}", mn["rpr_seconds"], mn["n"] / mn["rpr_seconds"],
             mn["rpr_products"], ""],
            [mn["pool"], f"MC dropout T={s['mc_passes']}", mn["mc_seconds"],
             mn["n"] / mn["mc_seconds"], "", ""],
            [vo["pool"], f"RPR, tol {s['tol']}", vo["rpr_seconds"], vo["n"] / vo["rpr_seconds"],
             vo["rpr_products"], 1.0],
            [vo["pool"], f"cheap: tol {s['cheap_tol']} + settled RPR", vo["cheap_seconds"],
             vo["n"] / vo["cheap_seconds"], vo["cheap_products"], vo["spearman_cheap_vs_tol"]],
            [vo["pool"], f"MC dropout T={s['mc_passes']}", vo["mc_seconds"],
             vo["n"] / vo["mc_seconds"], "", ""],
        ]  # fmt: skip
        lines += [
            "",
            "## Pool throughput",
            "",
            markdown_table(
                ["pool", "method", "wall s", "samples/s", "products/sample", "Spearman vs tol"],
                rows,
            ),
        ]
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


def plot(results: dict[str, Any], path: Path) -> None:
    """``solvers.png``: wall time per configuration and case (log scale), and pool samples/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("rows", []) if r["status"] == "ok"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, len(CONFIGS))
    for j, name in enumerate(CONFIGS):
        xs = [i + j * width for i, c in enumerate(cases) if _row(rows, c, name)]
        ys = [_row(rows, c, name)["seconds"] for c in cases if _row(rows, c, name)]  # type: ignore[index]
        if xs:
            axes[0].bar(xs, ys, width, label=name)
    axes[0].set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("wall seconds (k=10)")
    axes[0].legend(fontsize=7)
    tput = results.get("throughput")
    if tput:
        vo = tput["volumes"]
        names = ["RPR tol", "cheap", "MC dropout"]
        secs = [vo["rpr_seconds"], vo["cheap_seconds"], vo["mc_seconds"]]
        axes[1].bar(names, [vo["n"] / t for t in secs])
        axes[1].set_title(vo["pool"], fontsize=9)
        axes[1].set_ylabel("samples / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(results: dict[str, Any], args: Any, folder: Path) -> None:
    """Judge the targets, write results.json, report.md and solvers.png; print the report."""
    results["targets"] = targets(results, args)
    write_json(folder / "results.json", results)
    text = report_markdown(results, args)
    (folder / "report.md").write_text(text)
    plot(results, folder / "solvers.png")
    print(text)


# -- command line --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    a = parser.add_argument
    a("--out", type=Path, default=Path("out/bench_solvers"))
    a("--device", choices=("cpu", "cuda"), default="cpu")
    a("--sizes", default="mnist,32,64,128", help="cases: mnist and 3-D edges (128 only on cuda)")
    a("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    a("--skip", default="", help="CASE:CONFIG pairs to leave out, e.g. 64:lanczos-b16")
    a("--parts", default="solvers,p2,throughput", help="which parts to run")
    a("--smoke", "--quick", dest="smoke", action="store_true", help="tiny sizes, in seconds")
    a("--k", type=int, default=10)
    a("--tol", type=float, default=1e-4)
    a("--cheap-tol", type=float, default=1e-2, help="tolerance of the cheap mode (P3)")
    a("--settle", type=float, default=1e-2, help="relative RPR change counted as settled (P3)")
    a("--mnist-images", type=int, default=200, help="images of the MNIST case (P2's subset)")
    a("--p2-images", type=int, default=10_000)
    a("--throughput-mnist", type=int, default=1000, help="MNIST test images for throughput")
    a("--pool-volumes", type=int, default=8)
    a("--pool-size", type=int, default=64, help="edge of the pool volumes (P1, P3, P4 case)")
    a("--pool-block", type=int, default=1, help="Lanczos block size for pool scoring")
    a("--pool-batch", type=int, default=8, help="pool volumes per operator (per network pass)")
    a("--depth", type=int, default=4, help="PocketUNet depth")
    a("--filters", type=int, default=8, help="PocketUNet filters")
    a("--mc-passes", type=int, default=20, help="MC-dropout forward passes T")
    a("--dense-limit", type=int, default=1024, help="largest min(m, n) for the dense path")
    a("--threads", type=int, default=1, help="torch threads of every run (1: robust when shared)")
    a("--seed", type=int, default=0)
    a("--data-dir", default=None, help="MNIST idx folder (default: shared data)")
    a("--in-process", action="store_true", help="no subprocesses (peak memory less clean)")
    a("--config-timeout", type=float, default=None, help="seconds before a config is abandoned")
    a("--note", default="", help="a sentence for report.md (e.g. the machine's load)")
    a("--from-json", type=Path, default=None, help="re-judge and re-render a results.json only")


def _resolve(args: argparse.Namespace) -> tuple[list[Case], list[str], set[str], list[str]]:
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    for key in ("k", "mnist_images", "p2_images", "pool_volumes", "threads", "mc_passes"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not 0 < args.tol < 1 or not 0 < args.cheap_tol < 1:
        raise ValueError(
            f"--tol and --cheap-tol must be in (0, 1), got {args.tol}, {args.cheap_tol}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch.cuda.is_available() is False")
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"--configs must be among {list(CONFIGS)}, got {bad}")
    notes: list[str] = []
    cases = []
    for s in (s.strip() for s in args.sizes.split(",") if s.strip()):
        if s == "mnist":
            cases.append(Case("mnist", "mnist", 28, args.mnist_images))
        elif s.isdigit() and int(s) % 2 ** (args.depth - 1) == 0:
            if int(s) >= 128 and args.device != "cuda":
                notes.append(f"{s}^3 skipped: it is a GPU case and this run is on the CPU")
                continue
            cases.append(Case(f"unet{s}", "unet", int(s), 1, args.depth, args.filters))
        else:
            raise ValueError(f"--sizes must be 'mnist' or multiples of 2**(depth-1), got {s!r}")
    parts = {p for p in args.parts.split(",") if p}
    if not parts <= {"solvers", "p2", "throughput"}:
        raise ValueError(f"--parts must be among solvers,p2,throughput, got {sorted(parts)}")
    return cases, configs, {s for s in args.skip.split(",") if s}, notes


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed ``args``; return the exit status (0 on success)."""
    try:
        cases, configs, skips, notes = _resolve(args)
    except ValueError as err:
        print(f"bench solvers: {err}", file=sys.stderr)
        return 2
    folder = out_dir(args.out)
    if args.from_json is not None:  # the run's own settings judge it
        saved = json.loads(Path(args.from_json).read_text())
        finish(saved, argparse.Namespace(**saved["settings"]), folder)
        return 0
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_description(args.device),
        "settings": {  # not the CLI's handler function, which JSON cannot hold
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if not callable(v)
        },
        "notes": notes,
        "load_before": os.getloadavg(),
    }
    weights = str(folder / "mnist_net.pt")
    if "p2" in parts or any(c.model == "mnist" for c in cases):
        results["p2"] = tp.p2_scoring(args, weights)
    base = {
        "k": args.k, "tol": args.tol, "seed": args.seed, "device": args.device,
        "threads": args.threads, "weights": weights, "data_dir": args.data_dir,
        "dense_limit": args.dense_limit,
    }  # fmt: skip
    if "solvers" in parts:
        results["rows"] = run_cases(cases, configs, skips, base, args)
    if "throughput" in parts:
        results["throughput"] = tp.pool_throughput(args, weights)
    results["seconds"] = time.perf_counter() - t0
    results["load_after"] = os.getloadavg()
    finish(results, args, folder)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rprselect.benchmarks.solvers [options]`` (``--worker SPEC OUT`` internally)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        row = run_config(json.loads(Path(argv[1]).read_text()))
        write_json(argv[2], row)
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m rprselect.benchmarks.solvers", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
