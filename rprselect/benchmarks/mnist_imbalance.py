"""The paper's MNIST class-imbalance experiment (Section 1.3 and 2.1, Figures 1-3).

Two bias-free :class:`~rprselect.models.MNISTNet` are trained as in the paper (SGD, learning rate
3e-3, batch 32, cross-entropy): one on the whole training set and one without 99% of the digits
1 and 9. For every test image the exact SVD of :math:`A[x] \\in \\mathbb{R}^{10 \\times 784}` gives

.. math::

    \\text{rank-}k\\text{ logits (Eq. 8)} = \\sum_{i \\le k} \\sigma_i u_i v_i^T x, \\qquad
    \\mathrm{RPR}(x; k) = \\frac{\\|V_k V_k^T x\\|^2}{\\|x\\|^2}, \\qquad
    \\mathrm{LPR}(y; k) = \\frac{\\|U_k U_k^T y\\|^2}{\\|y\\|^2}

with the paper's ±2 label map ``y``. Since ``m = 10``, rank 10 is full rank and the rank-10 CNN
must fail on exactly the images the network itself fails on.

Run ``rprselect bench mnist-imbalance --out DIR`` or
``python -m rprselect.benchmarks.mnist_imbalance --out DIR``. Outputs under ``--out``:
``results.json``, ``report.md``, ``fig1_rank_k_accuracy.png``, ``fig2_rpr.png``,
``fig3_lpr.png``, the trained weights ``model_{balanced,unbalanced}.pt`` with ``train_log.json``
(reloaded by ``--reuse``), and the per-image ratios ``per_image.npz``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rprselect import label_logits, linearize_batch, lpr, rpr, svd_batch
from rprselect.benchmarks.common import Stopwatch, machine_description, out_dir, write_json
from rprselect.benchmarks.mnist_plots import (
    comparison_rows,
    plot_figures,
    print_and_write_report,
    summarise,
)
from rprselect.data import ImageLabels, imbalance_indices, load_mnist
from rprselect.data.mnist import default_mnist_dir
from rprselect.models import MNISTNet

__all__ = [
    "MODELS",
    "Analysis",
    "TrainLog",
    "add_arguments",
    "analyse",
    "main",
    "run",
    "summarise",
    "train_model",
]

#: the two experiments, in the order they are trained, plotted and tabulated
MODELS: tuple[str, str] = ("balanced", "unbalanced")
NUM_CLASSES = 10
K = 10  # m = 10: ranks 1..10, rank 10 is full rank
PAPER_EPOCHS = 50
QUICK = {"epochs": 1, "train_subset": 5000, "test_subset": 1000}


@dataclass
class TrainLog:
    """How a model was trained: per-epoch mean loss and wall time."""

    name: str
    n_train: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    loss: list[float]
    seconds: list[float]
    train_counts: list[int]


@dataclass
class Analysis:
    """Per-image results of one model on the test images (N images, ranks 1..K).

    Attributes:
        labels: ``(N,)`` true digits.
        pred_tensor: ``(N,)`` argmax of the network's logits F(x), in the analysis dtype.
        pred_float32: ``(N,)`` argmax of F(x) computed in float32, as the model was trained.
        pred_rank: ``(N, K)`` argmax of the rank-k logits, column ``k - 1``.
        rpr: ``(N, K)`` RPR(x; k). lpr: ``(N, K)`` LPR(y(label); k).
        max_residual: largest SVD residual over all triplets and images.
        max_gap: largest ``|A_10[x] x - F(x)| / |F(x)|`` (0 up to rounding).
    """

    labels: np.ndarray
    pred_tensor: np.ndarray
    pred_float32: np.ndarray
    pred_rank: np.ndarray
    rpr: np.ndarray
    lpr: np.ndarray
    max_residual: float
    max_gap: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="MNIST idx folder (default: shared data)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/mnist_imbalance"), help="output folder"
    )
    parser.add_argument("--epochs", type=int, default=None, help="default 50 (1 with --quick)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 epoch on 5000 training images, analysis of 1000 test images",
    )
    parser.add_argument("--train-subset", type=int, default=None, help="random training subset")
    parser.add_argument("--test-subset", type=int, default=None, help="random test subset")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument(
        "--seed", type=int, default=0, help="weights, shuffles, the imbalanced draw, subsets"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--lr", type=float, default=3e-3, help="SGD learning rate (paper: 3e-3)")
    parser.add_argument("--batch-size", type=int, default=32, help="paper: 32")
    parser.add_argument("--chunk", type=int, default=100, help="test images per SVD batch")
    parser.add_argument(
        "--analysis-dtype",
        choices=("float32", "float64"),
        default="float64",
        help="dtype of the network passes that build A[x] (default float64, see module notes)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="load the saved models from --out instead of training"
    )
    parser.add_argument("--note", default="", help="a sentence added to report.md (e.g. why)")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(args.quick)
    settings = {
        "epochs": args.epochs if args.epochs is not None else (QUICK["epochs"] if quick else 50),
        "train_subset": args.train_subset or (QUICK["train_subset"] if quick else None),
        "test_subset": args.test_subset or (QUICK["test_subset"] if quick else None),
    }
    for name in ("epochs", "train_subset", "test_subset"):
        _positive(f"--{name.replace('_', '-')}", settings[name])
    for name in ("batch_size", "chunk"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch.cuda.is_available() is False")
    return settings


def _subset(data: ImageLabels, n: int | None, seed: int) -> ImageLabels:
    if n is None or n >= len(data.labels):
        return data
    idx = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(seed))[:n]
    idx = torch.sort(idx).values
    return ImageLabels(data.images[idx], data.labels[idx])


def train_model(
    name: str,
    data: ImageLabels,
    *,
    epochs: int,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[nn.Module, TrainLog], None] | None = None,
) -> tuple[MNISTNet, TrainLog]:
    """Train a fresh :class:`MNISTNet` with plain SGD on cross-entropy (paper Section 1.3).

    Args:
        name: label for the log lines.
        data: training images ``(N, 1, 28, 28)`` and labels.
        epochs: passes over ``data``; every epoch reshuffles with a generator seeded by ``seed``.
        lr: SGD learning rate. batch_size: images per step (the last batch may be smaller).
        seed: seed of the initial weights and of the shuffles.
        device: where to train.
        on_epoch: called with the model and the log after every epoch (e.g. to checkpoint).

    Returns:
        The trained model (on ``device``, eval mode) and its :class:`TrainLog`.
    """
    torch.manual_seed(seed)
    model = MNISTNet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    X, y = data.images.to(device), data.labels.to(device)
    n = len(y)
    gen = torch.Generator().manual_seed(seed + 1)
    log = TrainLog(name, n, epochs, lr, batch_size, seed, [], [], _counts(data.labels))
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)
        starts = range(0, n, batch_size)
        for start in _progress(starts, f"{name} epoch {epoch}/{epochs}"):
            idx = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        log.loss.append(float(total) / n)
        log.seconds.append(time.perf_counter() - t0)
        print(
            f"[{name}] epoch {epoch}/{epochs}: mean loss {log.loss[-1]:.4f}, "
            f"{log.seconds[-1]:.1f} s",
            flush=True,
        )
        if on_epoch is not None:
            on_epoch(model, log)
    return model.eval(), log


def _progress(it: range, desc: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional (extra "extras"): train without a bar
        return it
    return tqdm(it, desc=desc, unit="batch", leave=False, disable=None, mininterval=5.0)


def _counts(labels: Tensor | np.ndarray) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=NUM_CLASSES).tolist()


@torch.no_grad()
def analyse(
    model: nn.Module,
    data: ImageLabels,
    *,
    chunk: int = 100,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Analysis:
    """Exact SVD of A[x] for every test image and the paper's per-image quantities.

    Each chunk of images is linearised at once; ``svd_batch(..., solver="dense")`` materialises
    A from its 10-row side in one adjoint pass and runs LAPACK in float64. The rank-k logits are
    the cumulative sums of :math:`\\sigma_i (v_i^T x) u_i` (Eq. 8), so all ranks cost one
    einsum; they agree with :func:`rprselect.rank_k_logits`.

    ``svd_batch`` returns U and V in the dtype of the network passes, so float32 passes leave
    :math:`U_{10}` orthonormal only to about 1e-7 and LPR(y; 10) = 1 only to that accuracy.
    Running the trained float32 weights in float64 (the default) makes it 1 to about 1e-15,
    as the paper reports, at the same cost on our CPUs; ``pred_float32`` records the float32
    network's own predictions for comparison.

    Args:
        model: a trained MNISTNet (not modified; a copy is cast to ``dtype``).
        data: test images and labels.
        chunk: images per batched SVD. device: where to compute.
        dtype: dtype of the network passes that build A[x].

    Returns:
        :class:`Analysis` with per-image predictions and ratios.
    """
    model32 = copy.deepcopy(model).to(device=device, dtype=torch.float32).eval()
    net = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    parts: dict[str, list[np.ndarray]] = {
        key: [] for key in ("pred_tensor", "pred_float32", "pred_rank", "rpr", "lpr")
    }
    max_residual = max_gap = 0.0
    for start in range(0, len(data.labels), chunk):
        X32 = data.images[start : start + chunk].to(device)
        X = X32.to(dtype)
        y = data.labels[start : start + chunk].to(device)
        parts["pred_float32"].append(model32(X32).argmax(1).cpu().numpy())
        op = linearize_batch(net, X)
        res = svd_batch(op, k=K, solver="dense")
        logits = op.output.double()  # type: ignore[union-attr]  # F(x), (B, 10)
        coef = torch.einsum("bkn,bn->bk", res.V.flatten(2).double(), X.flatten(1).double())
        terms = (res.S * coef).unsqueeze(-1) * res.U.double()  # (B, K, 10)
        rank_logits = terms.cumsum(1)  # row k-1: A_k[x] x
        gap = (rank_logits[:, -1] - logits).norm(dim=1) / logits.norm(dim=1).clamp_min(1e-300)
        max_gap = max(max_gap, float(gap.max()))
        max_residual = max(max_residual, float(res.residuals.max()))
        parts["pred_tensor"].append(logits.argmax(1).cpu().numpy())
        parts["pred_rank"].append(rank_logits.argmax(2).cpu().numpy())
        parts["rpr"].append(rpr(res, X).cpu().numpy())
        parts["lpr"].append(lpr(res, label_logits(y, NUM_CLASSES).to(device)).cpu().numpy())
    cat = {key: np.concatenate(val) for key, val in parts.items()}
    return Analysis(labels=data.labels.numpy(), max_residual=max_residual, max_gap=max_gap, **cat)


def _save_models(folder: Path, models: dict[str, nn.Module], logs: dict[str, TrainLog]) -> None:
    for name, model in models.items():
        torch.save(model.state_dict(), folder / f"model_{name}.pt")
    write_json(folder / "train_log.json", {name: asdict(log) for name, log in logs.items()})


def _load_models(folder: Path, device: str) -> tuple[dict[str, nn.Module], dict[str, TrainLog]]:
    models: dict[str, nn.Module] = {}
    for name in MODELS:
        path = folder / f"model_{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--reuse needs the saved model {path}; run once without --reuse to train it"
            )
        model = MNISTNet()
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        models[name] = model.to(device).eval()
    log_path = folder / "train_log.json"
    logs = {}
    if log_path.is_file():
        logs = {name: TrainLog(**log) for name, log in json.loads(log_path.read_text()).items()}
    return models, logs


def _experiment(args: argparse.Namespace, settings: dict[str, Any], folder: Path) -> int:
    sw = Stopwatch()
    t_start = time.perf_counter()
    data_dir = args.data_dir if args.data_dir is not None else default_mnist_dir()
    with sw("load data"):
        test = _subset(load_mnist(data_dir, "test"), settings["test_subset"], args.seed + 2)
        if not args.reuse:
            train = _subset(load_mnist(data_dir, "train"), settings["train_subset"], args.seed)
            keep = imbalance_indices(train.labels, rare=(1, 9), keep_fraction=0.01, seed=args.seed)
            sets = {
                "balanced": train,
                "unbalanced": ImageLabels(train.images[keep], train.labels[keep]),
            }
    if args.reuse:
        models, logs = _load_models(folder, args.device)
        if logs:  # report the epochs the saved models were trained for
            settings["epochs"] = logs[MODELS[0]].epochs
    else:
        models, logs = {}, {}
        for name in MODELS:
            with sw(f"train {name}"):
                models[name], logs[name] = train_model(
                    name,
                    sets[name],
                    epochs=settings["epochs"],
                    lr=args.lr,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    device=args.device,
                    on_epoch=lambda model, log: _save_models(
                        folder, {log.name: model}, {**logs, log.name: log}
                    ),
                )
    dtype = getattr(torch, args.analysis_dtype)
    analyses, summaries = {}, {}
    for name in MODELS:
        with sw(f"analyse {name}"):
            analyses[name] = analyse(
                models[name], test, chunk=args.chunk, device=args.device, dtype=dtype
            )
            summaries[name] = summarise(analyses[name])
        print(f"[{name}] analysed {len(test.labels)} test images", flush=True)
    np.savez_compressed(
        folder / "per_image.npz",
        **{f"{n}_{f}": getattr(a, f) for n, a in analyses.items() for f in _PER_IMAGE},
    )
    with sw("figures"):
        figures = plot_figures(folder, analyses, summaries)
    sw.seconds["total"] = time.perf_counter() - t_start
    results = {
        "settings": {
            **settings,
            "paper_epochs": PAPER_EPOCHS,
            "quick": bool(args.quick),
            "reuse": bool(args.reuse),
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": args.device,
            "analysis_dtype": args.analysis_dtype,
            "threads": torch.get_num_threads(),
            "data_dir": str(data_dir),
            "imbalance": {"rare": [1, 9], "keep_fraction": 0.01},
        },
        "machine": machine_description(args.device),
        "training": {name: asdict(log) for name, log in logs.items()},
        "models": summaries,
        "figures": figures,
        "seconds": sw.seconds,
    }
    write_json(folder / "results.json", results)
    print_and_write_report(folder, results, comparison_rows(results), note=args.note)
    return 0


_PER_IMAGE = ("labels", "pred_tensor", "pred_float32", "pred_rank", "rpr", "lpr")


def run(args: argparse.Namespace) -> int:
    """Run the experiment with parsed ``args``; return the exit status (0 on success)."""
    try:
        settings = _resolve(args)
    except ValueError as err:
        print(f"mnist-imbalance: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        _positive("--threads", args.threads)
        torch.set_num_threads(args.threads)
    folder = out_dir(args.out)
    try:
        return _experiment(args, settings, folder)
    except FileNotFoundError as err:
        print(f"mnist-imbalance: {err}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rprselect.benchmarks.mnist_imbalance [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m rprselect.benchmarks.mnist_imbalance", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
