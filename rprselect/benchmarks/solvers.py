"""Solver cost against the paper's SLEPc method, and pool throughput (``rprselect bench solvers``).

Every configuration runs side by side in one invocation, each in a fresh subprocess (so that its
peak memory is its own), on the same model and samples. This module is the command line; the
harness is :mod:`~rprselect.benchmarks.solver_runs`, the memory probe
:mod:`~rprselect.benchmarks.peak_memory`, the targets and report
:mod:`~rprselect.benchmarks.solver_targets`. Configurations:

* ``reference``: the paper's method, SLEPc ``cross`` on a shell matrix whose products are
  autograd JVP/VJP, one vector per network pass (:mod:`rprselect.benchmarks.reference`);
* ``slepc-cross``, ``slepc-trlanczos``: SLEPc on rprselect's explicit-adjoint operator;
* ``lanczos-b1`` and the block variants ``lanczos-b4/b8/b16`` (all samples in each pass);
* ``dense``: the exact path, where ``min(m, n)`` products fit in one pass.

Columns: wall seconds, single-vector products per sample, batched network passes, max residual,
max |ΔRPR| against the reference, and peak memory: on CPU the rise of the process's peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the RSS before the step, on GPU
``torch.cuda.max_memory_allocated``. The pool part (:mod:`rprselect.benchmarks.throughput`)
times scoring, the ranking mode and the trace-once saving against MC-dropout entropy; targets
P1-P4 are judged from ratios of the same run. ``--weights`` adds each 3-D case again with a
trained PocketUNet (``scripts/train_solver_unet.py``) on crops of the shared BraTS cases.

Run ``rprselect bench solvers --out DIR`` or ``python -m rprselect.benchmarks.solvers``.
Outputs: ``results.json``, ``report.md`` (printed last) and ``solvers.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rprselect.benchmarks import throughput as tp
from rprselect.benchmarks.common import machine_description, out_dir, write_json
from rprselect.benchmarks.peak_memory import PeakMemory
from rprselect.benchmarks.solver_runs import Case, run_cases, run_config
from rprselect.benchmarks.solver_targets import plot, report_markdown, targets

__all__ = [
    "CONFIGS",
    "SMOKE",
    "Case",
    "PeakMemory",
    "add_arguments",
    "main",
    "run",
    "run_config",
    "targets",
]

#: configuration -> what it is
CONFIGS: dict[str, str] = {
    "reference": "paper: SLEPc cross, autograd JVP/VJP, 1 vector per pass",
    "slepc-cross": "SLEPc cross on the explicit-adjoint operator",
    "slepc-trlanczos": "SLEPc trlanczos on the explicit-adjoint operator",
    "lanczos-b1": "rprselect Lanczos, block size 1",
    "lanczos-b1-f32": "rprselect Lanczos, block size 1, bases stored in float32 (float64 sums)",
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
    "pool_volumes": 10,
    "pool_size": 8,
    "pool_edge": 8,
    "pool_batch": 2,
    "depth": 2,
    "filters": 4,
    "mc_passes": 3,
    "mnist_batch": 8,
    "trace_volumes": 2,
    "dense_limit": 64,
    "in_process": True,
    "weights": None,
}


def finish(results: dict[str, Any], args: Any, folder: Path) -> None:
    """Judge the targets, write results.json, report.md and solvers.png; print the report."""
    results["targets"] = targets(results, args)
    write_json(folder / "results.json", results)
    text = report_markdown(results, args)
    (folder / "report.md").write_text(text)
    plot(results, folder / "solvers.png", list(CONFIGS))
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
    a("--rank-delta", type=float, default=1e-2, help="RankStop's certified RPR accuracy (P3)")
    a("--mnist-images", type=int, default=200, help="images of the MNIST case (P2's subset)")
    a("--p2-images", type=int, default=10_000)
    a("--throughput-mnist", type=int, default=1000, help="MNIST test images for throughput")
    a("--pool-volumes", type=int, default=32, help="volumes of the P3 pool")
    a("--pool-size", type=int, default=64, help="edge of the P1/P4 case")
    a("--pool-edge", type=int, default=32, help="edge of the pool volumes (P3)")
    a("--mnist-batch", type=int, default=100, help="MNIST images per operator (throughput)")
    a("--trace-volumes", type=int, default=8, help="volumes of the trace-once comparison")
    a("--weights", default=None, help="trained PocketUNet state dict: adds the trained cases "
      "(scripts/train_solver_unet.py; the committed one: rprselect/benchmarks/weights/"
      "pocket_unet_brats.pt)")  # fmt: skip
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
    a("--resume", action="store_true", help="reuse rows finished by an earlier run (same spec)")
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
    if not 0 < args.tol < 1 or not 0 < args.rank_delta < 1:
        raise ValueError(
            f"--tol and --rank-delta must be in (0, 1), got {args.tol}, {args.rank_delta}"
        )
    if args.weights and not Path(args.weights).is_file():
        raise ValueError(f"--weights must be a saved state dict, got {args.weights!r}")
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
            if args.weights:
                cases.append(Case(f"unet{s}-trained", "unet", int(s), 1, args.depth,
                                  args.filters, str(Path(args.weights).resolve())))  # fmt: skip
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
    if argv[:1] == ["--worker"]:  # kept for old scripts; the harness runs solver_runs itself
        write_json(argv[2], run_config(json.loads(Path(argv[1]).read_text())))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m rprselect.benchmarks.solvers", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
