"""Pool-scoring scaling from 1 to P processes: :func:`~rprselect.distributed.score_distributed`
under ``torchrun`` (gloo on CPU, NCCL on GPUs).

Each process count scores the same pool: bias-free :class:`~rprselect.models.PocketUNet` 3-D
volumes with Lanczos, a workload whose cost is the per-sample products, and whose cost varies
from volume to volume (the Lanczos iterations differ). With :math:`T_P` the scoring time on
:math:`P` processes (from the first unit claimed to the merged table, process start and
``import torch`` excluded; the end-to-end launch time is reported as well),

.. math:: S_P = \\frac{T_1}{T_P}, \\qquad E_P = \\frac{T_1}{P\\, T_P}.

Every process runs on one torch thread, so that P processes use P cores. The merged tables of
all process counts are checked to be equal (timing columns apart).

Run ``rprselect bench scaling --out DIR`` (``--quick``: tiny volumes, seconds). Outputs under
``--out``: ``results.json``, ``report.md``, ``scaling.png`` (busy time per rank) and the raw
``run_P.json`` of each process count; the table is printed last.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rprselect.benchmarks.common import machine_description, markdown_table, out_dir, write_json

__all__ = ["add_arguments", "run", "make_pool", "make_model"]

QUICK = {"n": 8, "size": 8, "depth": 2, "filters": 4, "k": 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    a = parser.add_argument
    a("--out", type=Path, default=Path("out/bench_scaling"))
    a("--quick", action="store_true", help=f"tiny pool, in seconds: {QUICK}")
    a("--procs", default="1,2", help="process counts, comma-separated (default: 1,2)")
    a("--n", type=int, default=96, help="volumes in the pool")
    a("--size", type=int, default=16, help="edge of the volumes (default: 16)")
    a("--depth", type=int, default=3, help="PocketUNet depth")
    a("--filters", type=int, default=8, help="PocketUNet filters")
    a("--k", type=int, default=4, help="singular triplets")
    a("--batch-size", type=int, default=2, help="volumes per work unit")
    a("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one GPU per process")
    a("--timeout", type=int, default=1200, help="seconds allowed to each launch")


def make_model(depth: int, filters: int) -> torch.nn.Module:
    """The seeded PocketUNet of the benchmark (same weights in every process)."""
    from rprselect.models import PocketUNet

    torch.manual_seed(0)
    return PocketUNet(1, 2, dims=3, depth=depth, filters=filters)


def make_pool(n: int, size: int) -> torch.Tensor:
    """``n`` volumes ``(1, size, size, size)``: uniform noise raised to powers 1..6, so that
    volumes range from dense to sparse and their Lanczos cost differs."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, size, generator=g)
    power = 1.0 + torch.arange(n).remainder(6).float()
    return x ** power.view(n, 1, 1, 1, 1)


def _settings(args: argparse.Namespace) -> dict[str, int]:
    keys = ("n", "size", "depth", "filters", "k")
    s = {key: int(getattr(args, key)) for key in keys}
    return {**s, **QUICK} if args.quick else s


def run(args: argparse.Namespace) -> int:
    """Score the pool on each process count, write the outputs and print the table."""
    out = out_dir(args.out)
    procs = [int(p) for p in str(args.procs).split(",")]
    if not procs or min(procs) < 1:
        raise ValueError(f"--procs must be positive integers, got {args.procs!r}")
    settings = _settings(args)
    runs = [_launch(p, settings, args, out) for p in procs]
    base = next((r for r in runs if r["procs"] == 1), runs[0])
    t1 = base["scoring_seconds"] * base["procs"]  # the 1-process time (or P * T_P)
    for r in runs:
        r["speedup"] = t1 / r["scoring_seconds"]
        r["efficiency"] = r["speedup"] / r["procs"]
        r["speedup_end_to_end"] = base["launch_seconds"] / r["launch_seconds"]
        r["equal_to_first"] = r["table_digest"] == runs[0]["table_digest"]
    header = [
        "processes",
        "scoring s",
        "speedup T1/TP",
        "efficiency T1/(P TP)",
        "end-to-end s",
        "busy s per rank",
        "units per rank",
        "busy max/mean",
        "load avg",
        "table equal",
    ]
    rows = [
        [
            r["procs"],
            r["scoring_seconds"],
            r["speedup"],
            r["efficiency"],
            r["launch_seconds"],
            " / ".join(f"{s['busy_seconds']:.1f}" for s in r["ranks"]),
            " / ".join(str(s["units"]) for s in r["ranks"]),
            r["imbalance"],
            f"{r['load_before']:.1f}→{r['load_after']:.1f}",
            "yes" if r["equal_to_first"] else "NO",
        ]
        for r in runs
    ]
    machine = machine_description(args.device)
    table = markdown_table(header, rows)
    what = (
        f"{settings['n']} PocketUNet volumes {settings['size']}³ (depth {settings['depth']}, "
        f"{settings['filters']} filters), Lanczos k={settings['k']}, {args.batch_size} volumes "
        f"per unit, 1 torch thread per process, {args.device}"
    )
    text = f"# Pool-scoring scaling\n\n{machine}; {what}.\n\n{table}\n"
    (out / "report.md").write_text(text)
    write_json(out / "results.json", {"machine": machine, "settings": settings, "runs": runs})
    _plot(runs, out / "scaling.png")
    print(f"{machine}; {what}")
    print(table)
    return 0 if all(r["equal_to_first"] for r in runs) else 1


def _launch(procs: int, settings: dict[str, int], args: argparse.Namespace, out: Path) -> Any:
    """Run the worker under torchrun on ``procs`` processes; its results with the wall time."""
    result = out / f"run_{procs}.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--local-addr=127.0.0.1", f"--nproc-per-node={procs}", "--monitor-interval=0.1"]
    job = dict(settings, batch_size=args.batch_size, device=args.device)
    # positional, since torchrun's own parser takes "--n" for an abbreviation of its options
    cmd += ["-m", "rprselect.benchmarks.scaling", str(result), json.dumps(job)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        raise OSError(f"the {procs}-process run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads(result.read_text())
    data.update(launch_seconds=seconds, load_before=load_before, load_after=os.getloadavg()[0])
    return data


def _plot(runs: list[Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional: the JSON and the table carry the numbers
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels, busy, idle = [], [], []
    for r in runs:
        for s in r["ranks"]:
            labels.append(f"P={r['procs']}\nrank {s['rank']}")
            busy.append(s["busy_seconds"])
            idle.append(s["idle_seconds"])
    ax.bar(labels, busy, label="busy (load + score + cache)")
    ax.bar(labels, idle, bottom=busy, label="idle at the end")
    ax.set_ylabel("seconds")
    ax.set_title("Work per rank")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the worker, run by torchrun on every rank -------------------------------------------------
def _worker(argv: list[str]) -> int:
    """``python -m rprselect.benchmarks.scaling RESULT.json '{"n": ..., ...}'`` on every rank."""
    from rprselect.distributed import is_main_rank, score_distributed

    if len(argv) != 2:
        raise SystemExit("usage: python -m rprselect.benchmarks.scaling RESULT.json JOB_JSON")
    result, job = Path(argv[0]), json.loads(argv[1])
    torch.set_num_threads(1)
    table = score_distributed(
        make_model(job["depth"], job["filters"]),
        make_pool(job["n"], job["size"]),
        k=job["k"],
        solver="lanczos",
        device=job["device"],
        batch_size=job["batch_size"],
        progress=False,
    )
    if is_main_rank():
        rows = [{c: v for c, v in row.items() if c != "batch_seconds"} for row in table.rows()]
        busy = [s.busy_seconds for s in table.ranks]
        data = {
            "procs": table.world_size,
            "scoring_seconds": table.wall_seconds,
            "ranks": [s.__dict__ for s in table.ranks],
            "imbalance": max(busy) / (sum(busy) / len(busy)),
            "products": int(table.n_products.sum()),
            "table_digest": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
            "summary": table.summary(),
        }
        write_json(result, data)
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
