"""Target P4 side by side: peak memory of the rank-10 Lanczos SVD at 64³ against one forward.

Each configuration runs in its own process (one torch thread), exactly as ``bench solvers``
measures P4: build the case, reset the peak (:class:`~rprselect.benchmarks.peak_memory.PeakMemory`),
one no-grad forward, reset again, then ``rprselect.svd_batch(model, X, 10, 1e-4, "lanczos")``
including the linearisation. Configurations: random or trained weights, float64 or float32
bases, and the working tree's ``lanczos.py`` or the one committed at ``--baseline REV`` (loaded
in place of the current module, the rest of the library unchanged). Rows are interleaved so
that before and after share the machine's load.

``--repeats`` runs every
configuration that many times, interleaved; heap layout moves the peak by 10-20 MiB between
identical runs, so the table gives the median and the range.

``--stages`` instead runs one configuration with the solver's stages wrapped: for each stage
(linearisation, forward and adjoint passes, orthonormalisations, Ritz step, restart) it prints
the RSS on entry and the peak RSS inside (``VmHWM`` reset on entry), the largest over all steps;
``(after)`` is the peak after the last stage (the Ritz vectors being formed).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/profile_p4.py --baseline 3dfa99c --repeats 3
    OMP_NUM_THREADS=1 .venv/bin/python scripts/profile_p4.py --stages float32 --weights random

This is a measurement script; no library code imports it.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import statistics
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
TRAINED = "rprselect/benchmarks/weights/pocket_unet_brats.pt"


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _use_baseline(rev: str) -> None:
    """Replace ``lanczos_svd`` by the one in ``rprselect/solvers/lanczos.py`` at ``rev``."""
    import rprselect.solvers as solvers

    src = subprocess.run(
        ["git", "show", f"{rev}:rprselect/solvers/lanczos.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    mod = types.ModuleType("rprselect.solvers._lanczos_base")
    mod.__package__ = "rprselect.solvers"
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{rev}:lanczos.py", "exec"), mod.__dict__)
    solvers.lanczos_svd = mod.lanczos_svd  # type: ignore[attr-defined]
    solvers._BACKENDS["lanczos"] = mod.lanczos_svd


def one(weights: str, basis: str, code: str, size: int) -> dict[str, Any]:
    """One configuration, measured as ``bench solvers`` does (call in a fresh process).

    ``code``: ``current`` (the working tree) or a git revision (its ``lanczos.py``)."""
    import rprselect
    from rprselect.benchmarks.bench_data import unet_and_volumes
    from rprselect.benchmarks.peak_memory import PeakMemory

    torch.set_num_threads(1)
    if code != "current":
        _use_baseline(code)
    model, X = unet_and_volumes(1, size, 4, 8, None if weights == "random" else TRAINED, 0)
    mem = PeakMemory("cpu")
    mem.reset()
    with torch.no_grad():
        out = model(X)
    forward = mem.peak()
    del out
    cfg = rprselect.SolverConfig(basis_dtype=basis)
    mem.reset()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = rprselect.svd_batch(model, X, 10, 1e-4, "lanczos", config=cfg)
    wall = time.perf_counter() - t0
    peak = mem.peak()
    return dict(
        weights=weights,
        basis=basis,
        code=code,
        forward_mib=forward / 2**20,
        peak_mib=peak / 2**20,
        ratio=peak / forward,
        seconds=wall,
        products=int(res.n_products),
        max_residual=float(res.residuals.max()),
        S1=float(res.S[0, 0]),
        S10=float(res.S[0, -1]),
    )


def stages(weights: str, basis: str, size: int) -> None:
    """Peak RSS per solver stage (largest over the steps), printed as a table."""
    import rprselect
    import rprselect.solvers.lanczos as L
    from rprselect.benchmarks.bench_data import unet_and_volumes

    torch.set_num_threads(1)
    model, X = unet_and_volumes(1, size, 4, 8, None if weights == "random" else TRAINED, 0)
    with torch.no_grad():
        model(X)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _status("VmRSS")
    _reset_hwm()
    rows: dict[str, list[float]] = {}

    def wrap(name: str, fn: Any) -> Any:
        def inner(*a: Any, **kw: Any) -> Any:
            entry = _status("VmRSS")
            top = _status("VmHWM")
            _reset_hwm()
            out = fn(*a, **kw)
            peak = _status("VmHWM")
            key = name if name != "apply" else ("adjoint" if kw.get("adjoint") else "forward")
            r = rows.setdefault(key, [0, 0, 0, 0])
            r[0] += 1
            r[1] = max(r[1], (entry - base) / 2**20)
            r[2] = max(r[2], (peak - base) / 2**20)
            r[3] = max(r[3], (peak - entry) / 2**20)
            gap = rows.setdefault("(between stages)", [0, 0, 0, 0])
            gap[2] = max(gap[2], (top - base) / 2**20)  # peak since the last stage began
            return out

        return inner

    L._apply = wrap("apply", L._apply)
    L.orthonormalize = wrap("orthonormalize", L.orthonormalize)
    L.rotate = wrap("rotate", L.rotate)
    of = L._Ritz.of
    L._Ritz.of = staticmethod(wrap("ritz", of))  # type: ignore[method-assign]
    import rprselect.solvers as S

    lin = wrap("linearize", rprselect.linearize_batch)
    cfg = rprselect.SolverConfig(basis_dtype=basis)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        op = lin(model, X)
        res = S.lanczos_svd(op, 10, 1e-4, cfg)
    end = _status("VmHWM")
    print(f"{weights} {basis}: baseline RSS {base / 2**20:.0f} MiB, products {res.n_products}")
    print(f"{'stage':<18}{'calls':>6}{'RSS in':>9}{'peak':>9}{'rise':>9}   (MiB above baseline)")
    for k, (c, e, p, r) in rows.items():
        print(f"{k:<18}{c:>6}{e:>9.0f}{p:>9.0f}{r:>9.0f}")
    print(f"{'(after)':<18}{'':>6}{'':>9}{(end - base) / 2**20:>9.0f}")


def table(rows: list[dict[str, Any]]) -> str:
    """One line per configuration: the median over repeats (min-max of the peak)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["weights"], r["basis"], r["code"]), []).append(r)
    out = [
        "| weights | bases | lanczos.py | forward MiB | SVD peak MiB, median (min-max) "
        "| peak/forward | wall s | products | max residual | S1 | S10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, b, c), rs in groups.items():
        peaks = sorted(r["peak_mib"] for r in rs)
        med = statistics.median(peaks)
        fwd = statistics.median(r["forward_mib"] for r in rs)
        wall = statistics.median(r["seconds"] for r in rs)
        r = rs[0]
        out.append(
            f"| {w} | {b} | {c} | {fwd:.0f} | {med:.0f} ({peaks[0]:.0f}-{peaks[-1]:.0f}) | "
            f"{med / fwd:.2f}x | {wall:.1f} | {r['products']} | {r['max_residual']:.2e} | "
            f"{r['S1']:.10g} | {r['S10']:.10g} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=None, help="git revision of lanczos.py to compare")
    ap.add_argument("--weights", nargs="+", default=["random", "trained"])
    ap.add_argument("--basis", nargs="+", default=["float64", "float32"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="processes per configuration")
    ap.add_argument("--stages", default=None, help="basis dtype: per-stage RSS of one solve")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # weights,basis,code (child)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.one:
        w, b, c = args.one.split(",")
        print(json.dumps(one(w, b, c, args.size)))
        return 0
    if args.stages:
        for w in args.weights:
            stages(w, args.stages, args.size)
        return 0
    codes = ([args.baseline] if args.baseline else []) + ["current"]
    rows = []
    for _, w, b, c in itertools.product(range(args.repeats), args.weights, args.basis, codes):
        cmd = [sys.executable, __file__, "--one", f"{w},{b},{c}", "--size", str(args.size)]
        done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.out:  # partial results survive an interrupted run
            Path(args.out).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
