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
import importlib
import os
import pickle
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["main", "build_parser", "load_model", "load_weights", "CheckpointError"]

_RAW = argparse.RawDescriptionHelpFormatter


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (``torch.load(..., weights_only=True)``)."""


# -- models and weights ------------------------------------------------------------------------
def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` with ``torch.load(..., weights_only=True)``, never unsafely.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` or ``"model"``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file holds Python objects beyond tensors and containers (unsafe
            loading is not attempted), is corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"WeightsUnpickler error: (.*)", str(err))
        why = m.group(1) if m else _first_line(err)
        why = why.split(" was not an allowed")[0].split(". Please")[0]
        raise CheckpointError(
            f"cannot load {path} with torch.load(weights_only=True): it holds Python objects "
            f"beyond tensors ({why}); unsafe loading is not attempted. Re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} must hold a state dict (name -> tensor), got {type(obj).__name__}"
        )
    return obj


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def unwrap_state_dict(
    state: dict[str, torch.Tensor], expected: Sequence[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """The entries of ``state`` that fit a model with the parameter names ``expected``.

    Checkpoints of wrapped models prefix every name: ``module.`` (``DataParallel``, DDP),
    ``_orig_mod.`` (``torch.compile``), or the attribute the network had in a Lightning module
    (``model.``, ``net.``, ..., next to entries of other submodules such as a loss). When the
    names do not match as they are, the entries under one prefix (or two nested ones) whose
    names, stripped, are exactly ``expected`` are taken.

    Returns:
        The state dict to load and the prefix stripped (``""`` when none was).
    """
    want = set(expected)

    def search(
        st: dict[str, torch.Tensor], prefix: str, depth: int
    ) -> tuple[dict[str, torch.Tensor], str] | None:
        if set(st) == want:
            return st, prefix
        if depth == 0:
            return None
        for head in sorted({k.split(".", 1)[0] + "." for k in st if "." in k}):
            sub = {k[len(head) :]: v for k, v in st.items() if k.startswith(head)}
            hit = search(sub, prefix + head, depth - 1)
            if hit is not None:
                return hit
        return None

    return search(state, "", 2) or (state, "")


def _apply_weights(model: nn.Module, path: str | Path) -> None:
    state, prefix = unwrap_state_dict(load_weights(path), list(model.state_dict()))
    if prefix:
        print(f"rprselect: weights: took the entries under {prefix!r} of {path}", file=sys.stderr)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys, shape mismatch
        raise CheckpointError(
            f"weights {path} do not fit the model: {' '.join(str(err).split())[:500]}"
        ) from err


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (called without arguments).

    Raises:
        ValueError: a malformed spec; ImportError: the module cannot be imported;
        TypeError: the factory does not return an ``nn.Module``; CheckpointError: bad weights.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"--model {spec!r}: cannot import {module_name}: {err}") from err
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {spec!r}: module {module_name} has no attribute {attr!r}")
        factory = getattr(factory, part)
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"--model {spec!r} must return a torch.nn.Module, got {type(model).__name__}"
        )
    if weights is not None:
        _apply_weights(model, weights)
    return model


def load_bundle(folder: str | Path) -> nn.Module:
    """The network of a MONAI bundle: ``configs/inference.json``'s ``network_def`` with the
    weights of ``models/model.pt`` (loaded with ``weights_only=True``).

    Raises:
        ImportError: MONAI is missing (``pip install 'rprselect[monai]'``).
        FileNotFoundError: the bundle lacks its config or its weights.
    """
    root = Path(folder)
    configs = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config = next((c for c in configs if c.is_file()), None)
    if config is None:
        raise FileNotFoundError(f"bundle {root} has no configs/inference.json")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"bundle {root} has no models/model.pt")
    try:
        from monai.bundle import ConfigParser
    except ImportError as err:
        raise ImportError("--bundle needs MONAI: pip install 'rprselect[monai]'") from err
    parser = ConfigParser()
    parser.read_config(str(config))
    if "bundle_root" not in parser.config:  # type: ignore[operator]
        parser["bundle_root"] = str(root)
    if "network_def" not in parser.config:  # type: ignore[operator]
        raise ValueError(f"bundle config {config} has no 'network_def'")
    model = parser.get_parsed_content("network_def")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"network_def of {config} must build a torch.nn.Module, got {type(model).__name__}"
        )
    _apply_weights(model, weights)
    return model


# -- subcommands -------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        out=args.out, n=args.n, seed=args.seed, epochs=args.epochs, k=args.k, progress=args.progress
    )
    return 0


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
    sc.add_argument("--k", type=int, default=10, help="singular triplets (default: 10)")
    sc.add_argument("--tol", type=float, default=1e-4, help="solver tolerance (default: 1e-4)")
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
        "--out proposals.csv",
    )
    se.add_argument("--scores", required=True, help="CSV from `rprselect score`")
    se.add_argument("--n", type=int, required=True, help="how many to propose")
    se.add_argument("--strategy", default="lowest", choices=["lowest", "diverse"])
    se.add_argument("--out", help="CSV to write (default: print)")
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
