"""``rprselect demo``: the paper's class-imbalance experiment in half a minute, no download.

scikit-learn's bundled 8x8 digits stand in for MNIST (paper Section 1.3). Half of them train a
bias-free :class:`~rprselect.models.MNISTNet` after digits 1 and 9 are cut to a few percent; the
other half is the unlabeled pool. Every pool image is scored (RPR at rank k, Eq. 10, and, since
the demo knows the labels, LPR of the ±2 label map, Eq. 13), and the ``n`` lowest-RPR images are
proposed for labelling. The printout says whether the proposals over-represent the two digits
the model barely saw, against their share of the pool.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from ._report import markdown_table
from .data import imbalance_indices, load_digits_tensors
from .models import MNISTNet
from .scoring import ScoreTable, score
from .select import Selection, select

__all__ = ["DemoResult", "run_demo", "RARE"]

#: the digits cut from the training set, as in the paper
RARE: tuple[int, ...] = (1, 9)


@dataclass
class DemoResult:
    """What the demo measured and wrote.

    Attributes:
        scores: the pool's :class:`ScoreTable` (with LPR).
        selection: the proposals.
        pool_labels: true digit of every pool image (by pool index).
        predicted: the model's digit for every pool image.
        rare_share_pool: fraction of the pool that is a rare digit.
        rare_share_proposals: fraction of the proposals that is a rare digit.
        files: name -> path of everything written.
        seconds: wall time of training and of scoring.
    """

    scores: ScoreTable
    selection: Selection
    pool_labels: np.ndarray
    predicted: np.ndarray
    rare_share_pool: float
    rare_share_proposals: float
    files: dict[str, Path]
    seconds: dict[str, float]

    @property
    def enrichment(self) -> float:
        """Rare share of the proposals over rare share of the pool (1 = no enrichment)."""
        return self.rare_share_proposals / self.rare_share_pool


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()


def run_demo(
    out: str | Path = "out/demo",
    n: int = 20,
    seed: int = 0,
    epochs: int = 8,
    keep_fraction: float = 0.03,
    k: int = 10,
    lpr_rank: int = 3,
    progress: bool = False,
    stream: TextIO | None = None,
    threads: int | None = 1,
) -> DemoResult:
    """Train on imbalanced digits, score the pool, propose ``n`` images, print and plot.

    Args:
        out: folder for ``scores.csv``, ``proposals.csv`` and the PNG plots.
        n: number of proposals.
        seed: seeds the split, the imbalance draw, the initial weights and the batches.
        epochs: training epochs (Adam, lr 1e-3, batches of 32).
        keep_fraction: share of digits 1 and 9 kept in the training set.
        k: singular triplets per image; RPR is reported at rank k.
        lpr_rank: rank at which LPR is reported (with 10 classes LPR at rank 10 is always 1).
        progress: show the scoring progress bar.
        stream: where to print (default stdout).
        threads: torch threads while the demo runs (restored after). One is fastest for
            8x8 images, whose tiny tensors gain nothing from intra-op threads and lose much
            on a busy machine; ``None`` keeps torch's setting.

    Returns:
        A :class:`DemoResult`.
    """
    if not 1 <= lpr_rank <= k:
        raise ValueError(f"lpr_rank must satisfy 1 <= lpr_rank <= k = {k}, got {lpr_rank}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(
            Path(out), n, seed, epochs, keep_fraction, k, lpr_rank, progress, stream or sys.stdout
        )
    finally:
        torch.set_num_threads(before)


def _run(
    out: Path,
    n: int,
    seed: int,
    epochs: int,
    keep_fraction: float,
    k: int,
    lpr_rank: int,
    progress: bool,
    stream: TextIO,
) -> DemoResult:
    images, labels = load_digits_tensors()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    half = len(perm) // 2
    train_idx, pool_idx = perm[:half], perm[half:]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool_idx):
        raise ValueError(f"n must satisfy 1 <= n <= pool size = {len(pool_idx)}, got {n!r}")
    out.mkdir(parents=True, exist_ok=True)
    keep = train_idx[imbalance_indices(labels[train_idx], RARE, keep_fraction, seed)]

    torch.manual_seed(seed)
    model = MNISTNet(in_size=8)
    t0 = time.perf_counter()
    _train(model, images[keep], labels[keep], epochs, seed)
    seconds = {"train": time.perf_counter() - t0}

    pool_x, pool_y = images[pool_idx], labels[pool_idx].numpy()
    with torch.no_grad():
        predicted = model(pool_x).argmax(1).numpy()
    t0 = time.perf_counter()
    table = score(model, pool_x, k=k, labels=pool_y, progress=progress)
    seconds["score"] = time.perf_counter() - t0
    sel = select(table, n)

    train_counts = np.bincount(labels[keep].numpy(), minlength=10)
    rare_pool = float(np.isin(pool_y, RARE).mean())
    rare_prop = float(np.isin(pool_y[sel.indices], RARE).mean())
    files = _write_files(out, table, sel, pool_x.numpy(), pool_y, predicted, lpr_rank)
    result = DemoResult(table, sel, pool_y, predicted, rare_pool, rare_prop, files, seconds)
    _report(result, train_counts, k, lpr_rank, stream)
    return result


def _per_digit_rows(r: DemoResult, train_counts: np.ndarray, lpr_rank: int) -> list[list[Any]]:
    t, y = r.scores, r.pool_labels[r.scores.index]
    pred = r.predicted[r.scores.index]
    lpr_r = t.lpr_curve[:, lpr_rank - 1] if t.lpr_curve is not None else np.full(len(t), np.nan)
    proposed = np.bincount(r.pool_labels[r.selection.indices], minlength=10)
    rows = []
    for d in range(10):
        m = y == d
        rows.append(
            [
                d,
                int(train_counts[d]),
                int(m.sum()),
                float((pred[m] == d).mean()),
                float(t.rpr[m].mean()),
                float(lpr_r[m].mean()),
                int(proposed[d]),
            ]
        )
    return rows


def _report(r: DemoResult, train_counts: np.ndarray, k: int, lpr_rank: int, stream: TextIO) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    n, N = len(r.selection), len(r.scores)
    p(
        f"rprselect demo: MNISTNet on 8x8 digits, digits {RARE} cut to "
        f"{int(train_counts[RARE[0]])} and {int(train_counts[RARE[1]])} training images; "
        f"trained in {r.seconds['train']:.1f} s, scored {N} pool images in "
        f"{r.seconds['score']:.1f} s.\n"
    )
    header = [
        "digit",
        "train",
        "pool",
        "accuracy",
        f"mean RPR@{k}",
        f"mean LPR@{lpr_rank}",
        "proposed",
    ]
    p(markdown_table(header, _per_digit_rows(r, train_counts, lpr_rank)))
    proposed = np.bincount(r.pool_labels[r.selection.indices], minlength=10)
    base = np.bincount(r.pool_labels, minlength=10) / len(r.pool_labels)
    p(f"\nProposals ({n} lowest RPR@{k}) against the pool's base rate:\n")
    rows = [
        [
            d,
            int(proposed[d]),
            float(base[d] * n),
            float(proposed[d] / (base[d] * n)) if base[d] > 0 else float("nan"),
        ]
        for d in range(10)
    ]
    p(markdown_table(["digit", "proposed", "expected at base rate", "enrichment"], rows))
    verdict = "enriched" if r.enrichment > 1.0 else "NOT enriched"
    p(
        f"\nDigits {RARE[0]} and {RARE[1]}: {r.rare_share_pool:.1%} of the pool, "
        f"{r.rare_share_proposals:.1%} of the proposals: {verdict} "
        f"(x{r.enrichment:.2f} over the base rate)."
    )
    wrong = r.predicted != r.pool_labels
    p(
        f"Misclassified by the model: {wrong.mean():.1%} of the pool, "
        f"{wrong[r.selection.indices].mean():.1%} of the proposals."
    )
    if r.scores.lpr_curve is not None:
        low = r.scores.index[np.argsort(r.scores.lpr_curve[:, lpr_rank - 1], kind="stable")[:n]]
        p(
            f"For comparison, the {n} lowest LPR@{lpr_rank} (it needs the labels, so it is a "
            f"diagnostic, not a selector) are {np.isin(r.pool_labels[low], RARE).mean():.1%} "
            f"digits {RARE[0]} and {RARE[1]}."
        )
    p("\nFiles:")
    for name, path in r.files.items():
        p(f"  {name:<10} {path}")


def _write_files(
    out: Path,
    table: ScoreTable,
    sel: Selection,
    x: np.ndarray,
    y: np.ndarray,
    predicted: np.ndarray,
    lpr_rank: int,
) -> dict[str, Path]:
    files = {"scores": out / "scores.csv", "proposals": out / "proposals.csv"}
    # the summary LPR column at the rank the console and proposals.csv use (lpr_at_3), not k
    lpr_at = lpr_rank if table.lpr_curve is not None else None
    table.ranked().to_csv(files["scores"], lpr_rank=lpr_at)
    pos = {int(i): j for j, i in enumerate(table.index)}
    with open(files["proposals"], "w") as fh:
        fh.write(f"rank,id,index,digit,predicted,rpr,lpr_{lpr_rank}\n")
        for rank, (i, sid, s) in enumerate(zip(sel.indices, sel.ids, sel.scores, strict=True)):
            lp = (
                repr(float(table.lpr_curve[pos[int(i)], lpr_rank - 1]))
                if table.lpr_curve is not None
                else ""
            )
            fh.write(f"{rank + 1},{sid},{i},{y[i]},{predicted[i]},{float(s)!r},{lp}\n")
    try:
        import matplotlib
    except ImportError:
        return files  # plots are optional: the CSVs hold everything
    matplotlib.use("Agg")
    files.update(_plots(out, table, sel, x, y, lpr_rank))
    return files


def _plots(
    out: Path, table: ScoreTable, sel: Selection, x: np.ndarray, y: np.ndarray, lpr_rank: int
) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    files = {
        "boxplot": out / "rpr_by_digit.png",
        "histogram": out / "proposals_vs_base.png",
        "grid": out / "proposals_grid.png",
    }
    yt = y[table.index]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].boxplot([table.rpr[yt == d] for d in range(10)])
    axes[0].set(title=f"RPR at rank {table.k} by digit", xlabel="digit", ylabel="RPR")
    if table.lpr_curve is not None:
        axes[1].boxplot([table.lpr_curve[yt == d, lpr_rank - 1] for d in range(10)])
    for ax in axes:
        ax.set_xticks(range(1, 11), [str(d) for d in range(10)])
    axes[1].set(title=f"LPR at rank {lpr_rank} by digit", xlabel="digit", ylabel="LPR")
    fig.tight_layout()
    fig.savefig(files["boxplot"], dpi=100)
    plt.close(fig)

    n = len(sel)
    proposed = np.bincount(y[sel.indices], minlength=10)
    base = np.bincount(y, minlength=10) / len(y) * n
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(np.arange(10) - 0.2, proposed, 0.4, label=f"proposed ({n} lowest RPR)")
    ax.bar(np.arange(10) + 0.2, base, 0.4, label="expected at the pool's base rate")
    ax.set(xticks=range(10), xlabel="digit", ylabel="images", title="Proposals by digit")
    ax.legend()
    fig.tight_layout()
    fig.savefig(files["histogram"], dpi=100)
    plt.close(fig)

    cols = min(n, 10)
    rows = -(-n // cols)
    fig, axes_grid = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.6 * rows), squeeze=False)
    for j, ax in enumerate(axes_grid.flat):
        ax.axis("off")
        if j < n:
            i = sel.indices[j]
            ax.imshow(x[i, 0], cmap="gray_r")
            ax.set_title(f"{y[i]}: {sel.scores[j]:.2f}", fontsize=8)
    fig.suptitle("Proposals (digit: RPR)", fontsize=9)
    fig.tight_layout()
    fig.savefig(files["grid"], dpi=100)
    plt.close(fig)
    return files
