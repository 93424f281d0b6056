"""Products, passes and seconds of each SVD backend on one 3-D pocket UNet (not a pytest test).

Run: ``.venv/bin/python scripts/measure_products.py`` (``--help`` for the knobs). The default is
the issue's setting: ``PocketUNet(in_channels=4, out_channels=2, dims=3, depth=3, filters=8)``
at 16^3, float32, random weights and input, k=10, tol=1e-4. It prints one Markdown table row
per solver; singular values are compared with the first solver's.

One thread is the default: on our shared 2-core machine, two torch threads under load made
every solver 10-15x slower (oversubscription), while products and passes do not change.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from rprselect import NotConvergedWarning, SolverConfig, linearize, svd
from rprselect.models import PocketUNet
from rprselect.solvers import measured_residuals
from rprselect.solvers.slepc import import_slepc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    net = PocketUNet(args.channels, 2, dims=3, depth=args.depth, filters=args.filters).eval()
    x = torch.randn(args.channels, *(args.size,) * 3)
    op = linearize(net, x, method="adjoint")
    m, n = op.shape
    print(
        f"PocketUNet(in={args.channels}, depth={args.depth}, filters={args.filters}) at "
        f"{args.size}^3, float32: A[x] is {m} x {n}; k={args.k}, tol={args.tol:g}, "
        f"threads={args.threads}"
    )

    runs = [("lanczos", 1), ("lanczos", 4)]
    try:
        import_slepc()
        runs.append(("slepc", 1))
    except ImportError as err:
        print(f"slepc skipped: {err}")

    rows, ref = [], None
    for solver, b in runs:  # every SVDResult counts its own products and passes
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = svd(op, k=args.k, tol=args.tol, solver=solver, config=SolverConfig(block_size=b))  # type: ignore[arg-type]
        seconds = time.perf_counter() - t0
        unconverged = sum(issubclass(w.category, NotConvergedWarning) for w in caught)
        k = res.k
        check = measured_residuals(
            op, res.U.reshape(1, k, -1), res.S[None], res.V.reshape(1, k, -1)
        )
        ref = res.S if ref is None else ref
        rel = float(((res.S - ref).abs() / ref).max())
        rows.append(
            f"| {res.solver} | {res.n_products} | {res.n_passes} | {seconds:.2f} | "
            f"{float(res.residuals.max()):.1e} | {float(check.max()):.1e} | "
            f"{int(res.converged.sum())}/{k} | {rel:.1e} | {unconverged} |"
        )
    print()
    print(
        "| solver | n_products | n_passes | seconds | max residual (reported) | "
        "max residual (recomputed) | converged | max rel. diff of S vs first | "
        "NotConverged warnings |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
