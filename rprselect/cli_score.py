"""``rprselect score``: everything that can be checked is checked before the first sample.

Before scoring: the device exists, ``--out`` and ``--cache`` can be written (their folders are
created), the model module is importable from the current folder (as ``python -m`` allows),
missing ``--weights`` are said out loud, and ``--solver dense`` is flagged when the matrices
are large. After scoring: the ranked CSV and ``<out>.failures.csv`` are written, only
rprselect's own warnings are shown (once each), and the exit code is 1 when more samples
failed than ``--max-failures`` allows.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import secrets
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["run_score", "check_device", "check_writable", "rprselect_warnings"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def check_device(text: str) -> torch.device:
    """``--device`` as a ``torch.device`` that exists here.

    Raises:
        ValueError: not a device name, or a CUDA/MPS device this machine does not have.
    """
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"--device must be a torch device such as cpu, cuda, cuda:1 or mps, got {text!r}"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {text}: CUDA is not available here (torch {torch.__version__}, "
                "torch.cuda.is_available() is False); use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(
                f"--device {text}: only {count} CUDA device(s) are visible (cuda:0 to "
                f"cuda:{count - 1})"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available here; use --device cpu")
    return dev


def check_writable(path: Path, what: str, example: str = "scores.csv") -> None:
    """Fail now rather than after the scoring: ``path`` is not a folder, its folder exists (it
    is created if needed) and a new file can be written in it.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        OSError: the folder cannot be created or written.
    """
    if path.is_dir():
        raise IsADirectoryError(
            f"{what} {path} is a folder; give a file name, e.g. {path / example}"
        )
    folder = path.parent
    above = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(
            f"{what} {path} cannot be written: {above} is a file, not a folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.probe"
        probe.open("x").close()
        probe.unlink()
    except OSError as err:
        raise OSError(
            f"{what} {path} cannot be written: {err.strerror or err} ({err.filename or folder})"
        ) from err
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path} cannot be written: permission denied")


def _cwd_on_path() -> None:
    """Let ``--model`` name a module of the current folder, as ``python -m`` does."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.insert(0, cwd)


def rprselect_warnings(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The messages of rprselect's own warnings among ``caught``, each once, in order.

    A warning is rprselect's when its category is defined in rprselect, or when it is a
    ``UserWarning`` issued from rprselect's code; deprecation notices and warnings of torch,
    MONAI or the user's model are dropped (``RPRSELECT_DEBUG=1`` shows them all). Warnings
    that differ only in their numbers (one per batch, say) count as one, shown with the first
    message and how many times it came.
    """
    debug = bool(os.environ.get("RPRSELECT_DEBUG"))
    seen: dict[tuple[str, str], list[Any]] = {}
    for w in caught:
        category = type(w.message)
        ours = category.__module__.split(".")[0] == "rprselect" or (
            issubclass(category, UserWarning)
            and not issubclass(category, (DeprecationWarning, FutureWarning))
            and os.path.abspath(w.filename).startswith(_PACKAGE + os.sep)
        )
        if ours or debug:
            text = " ".join(str(w.message).split())
            key = (category.__name__, re.sub(r"\d[\d.eE+-]*", "#", text))
            seen.setdefault(key, [text, 0])[1] += 1
    return [text if n == 1 else f"{text} [{n} times]" for text, n in seen.values()]


def _warn_dense(
    model: nn.Module, pool: Any, k: int | None, roi: tuple[int, ...] | None
) -> str | None:
    """Why ``--solver dense`` is a poor choice for this pool, or ``None``.

    The dense solver builds each A[x] (m x n) column by column or row by row, min(m, n)
    products; ``auto`` picks it only when min(m, n) <= max(dense_max, 2k).
    """
    from .settings import DEFAULT_K
    from .solvers import SolverConfig

    if roi is not None:
        return None  # the stitched output is not known without scoring
    try:
        x = pool[0]
        x = x[0] if isinstance(x, tuple | list) else x
        was = model.training
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            y = model(x[None].to(p.dtype if p is not None else torch.float32))
        model.train(was)
    except Exception:  # the scoring itself reports a sample the model cannot take
        return None
    n, m = int(x.numel()), int(y[0].numel())
    k = k if k is not None else min(DEFAULT_K, m, n)
    limit = max(SolverConfig().dense_max, 2 * k)
    if min(m, n) <= limit:
        return None
    return (
        f"--solver dense builds every A[x] explicitly: min(m, n) = {min(m, n)} products per "
        f"sample (A[x] is {m} x {n}), where --solver auto would use Lanczos for k={k} "
        f"(dense only up to min(m, n) = {limit}); expect it to be much slower"
    )


def _write_failures(path: Path, failures: Sequence[Any]) -> None:
    from .table import atomic_write

    def write(fh: Any) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "index", "reason"])
        writer.writerows([f.id, f.index, f.reason] for f in failures)

    atomic_write(path, write)


def _failure_summary(failures: Sequence[Any], total: int, path: Path) -> str:
    shown = "; ".join(f"{f.id}: {f.reason}" for f in failures[:3])
    more = f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
    return (
        f"{len(failures)} of {total} samples could not be scored, listed in {path}: {shown}{more}"
    )


def _roi(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        roi = tuple(int(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(
            f"--roi-size must be integers separated by commas, e.g. 64,64,64, got {text!r}"
        ) from err
    return roi


def run_score(args: argparse.Namespace) -> int:
    """``rprselect score``; returns the exit code (see :mod:`rprselect.cli`)."""
    from .checkpoints import load_bundle, load_model
    from .distributed import is_distributed_launch, is_main_rank
    from .pool import load_pool
    from .scoring import score

    device = check_device(args.device)
    roi = _roi(args.roi_size)
    out = Path(args.out)
    failed_path = out.with_name(out.stem + ".failures.csv")
    check_writable(out, "--out")
    if args.cache:
        check_writable(Path(args.cache), "--cache", "scores.cache.jsonl")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.bundle:
            model = load_bundle(args.bundle)
        else:
            _cwd_on_path()
            model = load_model(args.model, args.weights)
            if args.weights is None and not args.no_weights:
                notes.append(
                    f"--model {args.model} got no --weights: scoring the network as the "
                    "factory returns it (randomly initialised, unless the factory loads "
                    "weights itself); pass --weights FILE, or --no-weights to say so"
                )
        pool = load_pool(args.pool, stacked=args.stacked, model=model)
        if args.solver == "dense":
            why = _warn_dense(model, pool, args.k, roi)
            notes += [why] if why else []
        if is_main_rank():
            for note in notes:
                print(f"rprselect: warning: {note}", file=sys.stderr)
        try:
            table = score(
                model,
                pool,
                k=args.k,
                tol=args.tol,
                rank_delta=args.rank_delta,
                solver=args.solver,
                device=device,
                batch_size=args.batch_size,
                cache=args.cache,
                progress=args.progress,
                method=args.method,
                roi_size=roi,
                distributed=is_distributed_launch(),
            )
        except ValueError as err:
            if "rejected by the model" in str(err) and args.stacked is None:
                raise ValueError(
                    f"{err} (each file was read as one sample: the model's sample shape is "
                    "unknown without a convolution; --stacked reads every .npy/.npz file as "
                    "a stack of samples (N, C, *spatial))"
                ) from err
            raise
    if not is_main_rank():  # under torchrun, rank 0 reports and writes the table
        return 0
    failures = list(table.failures)
    total = len(table) + len(failures)
    for message in rprselect_warnings(caught):
        if failures and "could not be scored" in message:
            continue  # said below, with the file that lists them
        print(f"rprselect: warning: {message}", file=sys.stderr)
    if failures:
        _write_failures(failed_path, failures)
        print(
            f"rprselect: warning: {_failure_summary(failures, total, failed_path)}", file=sys.stderr
        )
    if len(table) == 0:
        raise ValueError(
            f"no sample of {args.pool} could be scored ({len(failures)} failures, listed "
            f"in {failed_path})"
        )
    ranked = table.ranked()
    ranked.to_csv(out)
    print(
        f"scored {len(table)} samples (k={table.k}, {int((~table.converged).sum())} not "
        f"converged, {len(failures)} failed); wrote {out}"
    )
    if failures:
        print(f"failures: {failed_path}")
    print("lowest RPR:")
    for i in range(min(5, len(ranked))):
        print(f"  {ranked.ids[i]}  {ranked.rpr[i]:.4f}")
    limit = math.inf if args.allow_failures else args.max_failures
    if len(failures) > limit:
        print(
            f"rprselect: error: {len(failures)} of {total} samples failed (more than "
            f"--max-failures {args.max_failures}); the scores of the others are in {out}. "
            "Pass --allow-failures (or --max-failures N) to accept failures",
            file=sys.stderr,
        )
        return 1
    return 0
