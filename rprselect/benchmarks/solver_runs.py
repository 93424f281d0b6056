"""The harness of ``rprselect bench solvers``: build a case, run one configuration, compare.

Every configuration runs on the same model and samples, each in a fresh subprocess (``python
-m rprselect.benchmarks.solver_runs SPEC OUT``) so that its peak memory is its own; see
:mod:`rprselect.benchmarks.solvers` for the configurations and the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rprselect.benchmarks import bench_data as tp
from rprselect.benchmarks.common import out_dir, write_json
from rprselect.benchmarks.peak_memory import PeakMemory

__all__ = ["Case", "build_case", "run_config", "run_cases"]


@dataclass(frozen=True)
class Case:
    """One model and its samples: ``mnist`` (MNISTNet on images) or ``unet`` (PocketUNet).

    ``weights`` (a PocketUNet state dict, e.g. from ``scripts/train_solver_unet.py``) makes it
    the trained network on crops of the shared BraTS cases; without it the weights are random
    (seeded) and the volumes synthetic.
    """

    name: str
    model: str
    size: int
    n_samples: int
    depth: int = 4
    filters: int = 8
    weights: str | None = None


# -- building a case (deterministic, so every subprocess sees the same model and samples) --------
def build_case(case: Case, seed: int, weights: str | None, data_dir: str | None) -> tuple[Any, Any]:
    """``(model, X)`` of a case, in eval mode (``weights``: the MNIST net's)."""
    from rprselect.models import MNISTNet

    torch.manual_seed(seed)
    model: torch.nn.Module
    if case.model == "mnist":
        model = MNISTNet(dropout=0.25)
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        X = tp.mnist_images(case.n_samples, data_dir, seed)[0]
        return model.eval(), X
    return tp.unet_and_volumes(case.n_samples, case.size, case.depth, case.filters, case.weights,
                               seed)  # fmt: skip


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
        b, _, store = name.split("-b")[1].partition("-f")  # lanczos-b<b>[-f32]
        basis = "float32" if store == "32" else "float64"
        cfg = rprselect.SolverConfig(block_size=int(b), seed=spec["seed"], basis_dtype=basis)
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
def _run_isolated(
    spec: dict[str, Any], work: Path, timeout: float | None, resume: bool = False
) -> dict[str, Any]:
    """:func:`run_config` in a fresh Python process, so its peak memory is its own.

    With ``resume``, a row finished earlier for the very same spec is read back instead.
    """
    tag = f"{spec['case']['name']}_{spec['config']}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.row.json"
    text = json.dumps(spec, sort_keys=True)
    if resume and out_path.exists() and spec_path.exists() and spec_path.read_text() == text:
        done: dict[str, Any] = json.loads(out_path.read_text())
        return done
    spec_path.write_text(text)
    out_path.unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "rprselect.benchmarks.solver_runs",
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
                row = _run_isolated(spec, work, args.config_timeout, args.resume)
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


if __name__ == "__main__":  # the worker of _run_isolated: SPEC OUT
    write_json(sys.argv[2], run_config(json.loads(Path(sys.argv[1]).read_text())))
