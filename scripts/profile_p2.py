"""Target P2 side by side: one SGD epoch against ``score()`` of the same MNIST images.

In one process with one torch thread, this times one training epoch of the paper's MNISTNet
(:func:`rprselect.benchmarks.throughput.train_epoch`: batch 32, SGD, ``model.train()`` so dropout
is active, exactly the benchmark's protocol), then RPR and LPR for ranks 1..k of the same images
with :func:`rprselect.scoring.score` (``solver="auto"``, which is the dense path for m = 10), and
prints the ratio. With ``--baseline REV`` the library as committed at ``REV`` is loaded beside
the working tree (``git archive`` into a temporary package ``rprselect_base``) and timed on the
same trained model, interleaved with the current code, so that before and after come from one
run on a shared, noisy machine. ``--ablate`` adds the current code with one fast path switched off
at a time (what each one buys). Each variant runs ``--repeats`` times; the fastest is kept.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/profile_p2.py --n 2000 --baseline 24d8710
    OMP_NUM_THREADS=1 .venv/bin/python scripts/profile_p2.py --profile cprofile

This is a measurement script; no library code imports it.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import importlib
import io
import os
import pstats
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_images(n: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` MNIST training images and labels (random ones without the data)."""
    from rprselect.benchmarks.bench_data import mnist_images

    folder = data_dir or str(ROOT.parent / "shared" / "data" / "mnist")
    return mnist_images(n, folder, seed=0)


def baseline_score(rev: str, tmp: Path) -> Callable[..., Any]:
    """``score`` of the library at git revision ``rev``, importable beside the working tree."""
    blob = subprocess.run(
        ["git", "archive", rev, "rprselect"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(tmp, filter="data")
    (tmp / "rprselect").rename(tmp / "rprselect_base")
    sys.path.insert(0, str(tmp))
    import rprselect.layers

    # models.py imports rprselect.layers absolutely: share the layer classes so that the old
    # tracer treats SumPool as the same leaf
    sys.modules["rprselect_base.layers"] = rprselect.layers
    return importlib.import_module("rprselect_base.scoring").score  # type: ignore[no-any-return]


@contextmanager
def without(path: str) -> Iterator[None]:
    """The current code with one fast path off: ``fusion`` (SumPool+ReLU adjoint in one
    product), ``matmul`` (conv adjoint into one channel by oneDNN instead), ``fft`` (5x5 conv
    adjoint by oneDNN instead), ``groups`` (all vectors in one pass), ``svd`` (LAPACK's SVD of
    the whole 10 x 784 matrix instead of QR first)."""
    import rprselect.adjoint as adj
    import rprselect.solvers.dense as dense
    from rprselect.rules import Conv

    saved: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    if path == "fusion":
        patch(adj, "_mask_then_pool", lambda steps, output_node: {})
    elif path in ("matmul", "fft"):
        fast, attr, off = Conv.adjoint, {"matmul": "use_matmul", "fft": "fft_size"}[path], None

        def slow(self: Any, z: torch.Tensor) -> list[torch.Tensor]:
            flag = getattr(self, attr)
            setattr(self, attr, off)
            try:
                return fast(self, z)  # type: ignore[no-any-return]
            finally:
                setattr(self, attr, flag)

        patch(Conv, "adjoint", slow)
    elif path == "groups":
        patch(dense, "PASS_BYTES", 2**62)
    elif path == "svd":
        patch(dense, "thin_svd", lambda A: torch.linalg.svd(A, full_matrices=False))
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)


def ablated(score: Callable[..., Any], path: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        with without(path):
            return score(*args, **kwargs)

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="MNIST images (default 2000)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=None, help="score() batch_size")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default ../shared/data/mnist)")
    p.add_argument("--baseline", default=None, help="git revision to time beside the tree")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ablate", action="store_true", help="also time each fast path switched off")
    p.add_argument("--profile", choices=("none", "cprofile", "torch"), default="none")
    p.add_argument("--top", type=int, default=25, help="rows of the profile listing")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    from rprselect.benchmarks.throughput import train_epoch
    from rprselect.models import MNISTNet
    from rprselect.scoring import score

    images, labels, source = load_images(args.n, args.data_dir)
    torch.manual_seed(0)
    model = MNISTNet(dropout=0.25)
    untrained = copy.deepcopy(model)
    variants: dict[str, Callable[..., Any]] = {"current": score}
    tmp = tempfile.TemporaryDirectory()
    if args.baseline:
        variants = {f"baseline {args.baseline}": baseline_score(args.baseline, Path(tmp.name))}
        variants["current"] = score
    if args.ablate:
        labels_off = {
            "fusion": "no SumPool+ReLU fusion",
            "matmul": "conv1 adjoint by oneDNN",
            "fft": "conv2 adjoint by oneDNN",
            "groups": "all 10 vectors in one pass",
            "svd": "LAPACK SVD without QR first",
        }
        for path, label in labels_off.items():
            variants[f"current, {label}"] = ablated(score, path)
    kw = dict(k=args.k, tol=args.tol, labels=labels, progress=False, batch_size=args.batch_size)

    times: dict[str, list[float]] = {"epoch": []}
    tables: dict[str, Any] = {}
    for r in range(args.repeats):
        net = model if r == 0 else copy.deepcopy(untrained)
        times["epoch"].append(train_epoch(net, images, labels))
        for name, fn in variants.items():
            t0 = time.perf_counter()
            tables[name] = fn(model, images, **kw)
            times.setdefault(name, []).append(time.perf_counter() - t0)
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))

    load = os.getloadavg()[0]
    epoch = min(times["epoch"])
    print(
        f"\nP2 side by side: {args.n} images ({source}), k = {args.k}, tol = {args.tol}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}, "
        f"load average {load:.2f}"
    )
    print("| what | seconds | ms/image | x one epoch |")
    print("|---|---|---|---|")
    print(f"| one SGD epoch (batch 32) | {epoch:.2f} | {1e3 * epoch / args.n:.3f} | 1.00 |")
    for name in variants:
        t = min(times[name])
        print(f"| score(), {name} | {t:.2f} | {1e3 * t / args.n:.3f} | {t / epoch:.2f} |")
    if args.baseline:
        a, b = tables[f"baseline {args.baseline}"], tables["current"]
        drpr = float(np.abs(np.asarray(a.rpr_curve) - np.asarray(b.rpr_curve)).max())
        dlpr = float(np.abs(np.asarray(a.lpr_curve) - np.asarray(b.lpr_curve)).max())
        ds = float(
            np.abs(np.asarray(a.singular_values) - np.asarray(b.singular_values)).max()
            / np.abs(np.asarray(a.singular_values)).max()
        )
        print(f"max |dRPR| {drpr:.2e}, max |dLPR| {dlpr:.2e}, max rel |dS| {ds:.2e}")

    if args.profile == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
        score(model, images, **kw)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)
    elif args.profile == "torch":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            score(model, images, **kw)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
