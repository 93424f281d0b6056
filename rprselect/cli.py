"""The ``rprselect`` command: ``demo``, ``score``, ``select`` and ``bench NAME``.

Exit codes: 0 success; 1 ``score`` finished but samples failed (more than ``--max-failures``,
default 0; ``--allow-failures`` accepts any number); 2 a user error (bad options, missing or
unwritable files, unreadable checkpoints, missing extras, or no command: the help is printed),
which ends as one line ``rprselect: error: ...`` on stderr and no traceback; 130 interrupted.
Set ``RPRSELECT_DEBUG=1`` to see the traceback instead, and every warning: otherwise only
rprselect's own warnings are shown, once each.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError, load_bundle, load_model, load_weights

__all__ = ["main", "build_parser", "load_model", "load_weights", "load_bundle", "CheckpointError"]

_RAW = argparse.RawDescriptionHelpFormatter


# -- subcommands -------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        out=args.out, n=args.n, seed=args.seed, epochs=args.epochs, k=args.k, progress=args.progress
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from .cli_score import run_score

    return run_score(args)


def _cmd_select(args: argparse.Namespace) -> int:
    from .scoring import ScoreTable
    from .select import select

    table = ScoreTable.from_csv(args.scores)
    sel = select(table, args.n, args.strategy)
    lines = ["rank,id,index,rpr"] + [
        f"{r + 1},{sid},{i},{float(s)!r}"
        for r, (sid, i, s) in enumerate(zip(sel.ids, sel.indices, sel.scores, strict=True))
    ]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"proposed {len(sel)} of {len(table)} samples ({args.strategy}); wrote {args.out}")
    else:
        sys.stdout.write(text)
    if args.plot:
        from .plots import plot_from_files

        plot_from_files(
            table, sel, args.plot, pool=args.pool, model=args.model, weights=args.weights
        )
        print(f"wrote {args.plot}", file=sys.stdout if args.out else sys.stderr)
    return 0


def _bench_unavailable(message: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise ImportError(message)

    return run


def _add_bench(sub: Any, argv: Sequence[str]) -> None:
    from . import benchmarks

    words = [a for a in argv if not a.startswith("-")]
    wanted = words[1] if len(words) > 1 and words[0] == "bench" else None
    bench = sub.add_parser(
        "bench",
        help="run a benchmark (the paper's experiments, solver cost, ...)",
        formatter_class=_RAW,
        description="Run one benchmark; see `rprselect bench NAME --help`.",
        epilog="examples:\n  rprselect bench mnist-imbalance --quick\n"
        "  rprselect bench solvers --help",
    )
    bsub = bench.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, (module, help_text) in benchmarks.BENCHMARKS.items():
        p = bsub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=_RAW,
            epilog=f"example:\n  rprselect bench {name} --quick",
        )
        if name != wanted:
            continue
        full = f"{benchmarks.__name__}.{module}"
        try:
            mod = benchmarks.load(name)
        except ModuleNotFoundError as err:
            why = (
                f"its module {full} is not installed yet"
                if err.name == full
                else f"importing {full} failed: {err}"
            )
            _unavailable(p, f"benchmark {name!r} is unavailable: {why}")
        except Exception as err:  # a plugin module can fail to import in any way
            _unavailable(
                p,
                f"benchmark {name!r} is unavailable: importing {full} failed: "
                f"{type(err).__name__}: {err}",
            )
        else:
            mod.add_arguments(p)
            p.set_defaults(func=mod.run)


def _unavailable(p: argparse.ArgumentParser, message: str) -> None:
    p.description = f"{p.description}\n\n{message}"
    p.set_defaults(func=_bench_unavailable(message), accepts_extra=True)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; ``argv`` tells which benchmark module (if any) to import."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="rprselect",
        formatter_class=_RAW,
        description="Propose which unlabeled images to annotate next, from the Right Projection "
        "Ratio of a bias-free CNN's truncated SVD.",
        epilog="examples:\n  rprselect demo\n"
        "  rprselect score --model mypkg.nets:make_unet --weights unet.pt "
        "--pool scans/ --out scores.csv\n"
        "  rprselect select --scores scores.csv --n 20",
    )
    parser.add_argument("--version", action="version", version=f"rprselect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="train on imbalanced 8x8 digits, score the pool, propose images",
        formatter_class=_RAW,
        description=_doc_line("demo"),
        epilog="examples:\n  rprselect demo\n  rprselect demo --out out/demo --n 20 --seed 0\n"
        "  rprselect demo --epochs 2 --n 5   # a quick check",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--n", type=int, default=20, help="proposals (default: 20)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--epochs", type=int, default=8, help="training epochs (default: 8)")
    demo.add_argument("--k", type=int, default=10, help="singular triplets (default: 10)")
    demo.add_argument("--progress", action="store_true", help="show a progress bar")
    demo.set_defaults(func=_cmd_demo)

    sc = sub.add_parser(
        "score",
        help="score a pool of image files, write a ranked CSV",
        formatter_class=_RAW,
        description="Score every file of a pool (.npy, .npz, .png, .nii, .nii.gz) by RPR at "
        "rank k and write the table ranked by ascending RPR (lowest = propose first).",
        epilog="examples:\n"
        "  rprselect score --model rprselect.models:MNISTNet --weights net.pt "
        "--pool 'digits/*.png' --out scores.csv\n"
        "  rprselect score --bundle my_bundle/ --pool scans/ --out scores.csv "
        "--roi-size 128,128,128 --cache scores.cache.jsonl\n"
        "A rerun with the same --cache resumes where a killed run stopped.",
    )
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="package.module:factory returning the nn.Module")
    src.add_argument(
        "--bundle", help="a MONAI bundle folder (configs/inference.json, models/model.pt)"
    )
    wts = sc.add_mutually_exclusive_group()
    wts.add_argument(
        "--weights",
        help="state dict for --model (loaded with weights_only=True; the 'module.' prefix of "
        "DataParallel/DDP and Lightning's 'state_dict' with 'model.' are unwrapped)",
    )
    wts.add_argument(
        "--no-weights",
        action="store_true",
        help="score --model as its factory returns it, without the warning that no --weights "
        "were given",
    )
    sc.add_argument("--pool", required=True, help="folder, file or glob of images")
    sc.add_argument(
        "--stacked",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read every .npy/.npz file as a stack of samples (N, C, *spatial) with ids "
        "file.npy:0, ... (default: when the array has one dimension more than the model's "
        "first convolution takes)",
    )
    sc.add_argument(
        "--out", required=True, help="CSV file to write (checked before scoring starts)"
    )
    sc.add_argument(
        "--k",
        type=int,
        default=None,
        help="singular triplets (default: min(10, min(m, n)) of A[x] for the model)",
    )
    sc.add_argument(
        "--tol",
        type=_tol,
        default=1e-4,
        help="solver tolerance, or 'rank': stop once every RPR(x; k) is certified within "
        "--rank-delta (the ranking mode; lanczos/auto solvers only) (default: 1e-4)",
    )
    sc.add_argument(
        "--rank-delta",
        type=float,
        default=0.01,
        help="with --tol rank: the certified accuracy of RPR(x; k), in (0, 1) (default: 0.01)",
    )
    sc.add_argument(
        "--solver",
        default="auto",
        choices=["auto", "dense", "lanczos", "slepc"],
        help="truncated SVD backend: dense builds A[x] explicitly (LAPACK; min(m, n) "
        "products, fast for small outputs such as classifiers), lanczos is the batched block "
        "Lanczos in torch, slepc the paper's SLEPc cross solver (extra 'slepc'); auto picks "
        "dense when min(m, n) <= max(64, 2k), else lanczos (default: auto)",
    )
    sc.add_argument(
        "--method",
        default="auto",
        choices=["auto", "adjoint", "autograd"],
        help="how A[x] is applied: adjoint uses the explicit Adjoint CNN (bias-free conv, "
        "ReLU, pooling, upsampling, skips), autograd the Jacobian by torch.func for any "
        "model; auto tries adjoint and falls back to autograd with a warning (default: auto)",
    )
    sc.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: cpu)")
    sc.add_argument("--batch-size", type=int, default=None, help="samples per batch")
    sc.add_argument("--cache", help="JSON Lines cache to resume from and append to")
    fails = sc.add_mutually_exclusive_group()
    fails.add_argument(
        "--max-failures",
        type=_count,
        default=0,
        metavar="N",
        help="exit with code 1 when more than N samples could not be scored (default: 0)",
    )
    fails.add_argument(
        "--allow-failures",
        action="store_true",
        help="exit with code 0 however many samples could not be scored",
    )
    sc.add_argument("--roi-size", help="sliding-window size, e.g. 64,64,64")
    sc.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar (default: on a terminal)",
    )
    sc.set_defaults(func=_cmd_score)

    se = sub.add_parser(
        "select",
        help="propose N samples from a scores CSV",
        formatter_class=_RAW,
        description="Propose N samples to label from a CSV written by `rprselect score`.",
        epilog="examples:\n  rprselect select --scores scores.csv --n 20\n"
        "  rprselect select --scores scores.csv --n 20 --strategy diverse "
        "--out proposals.csv\n"
        "  rprselect select --scores scores.csv --n 12 --plot proposals.png --pool scans/",
    )
    se.add_argument("--scores", required=True, help="CSV from `rprselect score`")
    se.add_argument("--n", type=int, required=True, help="how many to propose")
    from .registry import ACQUISITIONS, PRESETS
    from .select import DEFAULT_STRATEGY

    se.add_argument(
        "--strategy",
        default=DEFAULT_STRATEGY,
        choices=sorted({"lowest", "diverse", *ACQUISITIONS, *PRESETS} - {"jacobian_frobenius"}),
        metavar="NAME",
        help=f"default {DEFAULT_STRATEGY} (docs/acquisition.md); the paper's rule: lowest; "
        "strategies that need logits fall back to lowest when the CSV has none",
    )
    se.add_argument("--out", help="CSV to write (default: print)")
    se.add_argument("--plot", help="PNG of the proposals (with --pool) and the RPR histogram")
    se.add_argument("--pool", help="the scored pool (folder, file or glob), for --plot")
    se.add_argument("--model", help="package.module:factory, to overlay predictions in --plot")
    se.add_argument("--weights", help="state dict for --model")
    se.set_defaults(func=_cmd_select)

    _add_bench(sub, argv)
    return parser


def _doc_line(name: str) -> str:
    return {
        "demo": "The main job, with no download: a bias-free CNN is trained on "
        "scikit-learn's 8x8 digits with digits 1 and 9 cut to 3%, the held-out pool "
        "is scored, and the lowest-RPR images are proposed. Prints a per-digit table "
        "and writes scores.csv, proposals.csv and PNG plots."
    }[name]


def _tol(text: str) -> float | str:
    if text == "rank":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'rank', got {text!r}") from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rprselect`` command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    if not argv:  # a bare `rprselect`: the help, and exit code 2 since nothing was done
        parser.print_help()
        return 2
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, --version, or a usage error argparse printed
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError, ImportError) as err:
        if os.environ.get("RPRSELECT_DEBUG"):
            raise
        print(f"rprselect: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rprselect: interrupted", file=sys.stderr)
        return 130
