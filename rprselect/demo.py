"""``rprselect demo``: the paper's class-imbalance experiment in half a minute, no download.

scikit-learn's bundled 8x8 digits stand in for MNIST (paper Section 1.3). Half of them train a
bias-free :class:`~rprselect.models.MNISTNet` after digits 1 and 9 are cut to a few percent; the
other half is the unlabeled pool. Every pool image is scored (RPR at rank k, Eq. 10, and, since
the demo knows the labels, LPR of the ±2 label map, Eq. 13). On the same pool, ``n`` images are
proposed by the default strategy (:data:`~rprselect.select.DEFAULT_STRATEGY`, chosen by the
recorded rule of docs/acquisition.md: margin sampling), by the best RPR strategy of the
benchmark (``margin_rpr_strat``: margin weighted by 1 - RPR, class-stratified) and by the
paper's rule (the ``n`` lowest RPR at rank k), side by side. The printout says how much each
over-represents the two digits the model barely saw, against their share of the pool, and how
many of its proposals the model gets wrong.
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
from .acquisition import Labelled
from .data import imbalance_indices, load_digits_tensors
from .models import MNISTNet
from .scoring import ScoreTable, score
from .select import DEFAULT_STRATEGY, PAPER_STRATEGY, Selection, select

__all__ = ["DemoResult", "run_demo", "RARE", "COMPARED"]

#: the digits cut from the training set, as in the paper
RARE: tuple[int, ...] = (1, 9)

#: what the demo proposes side by side on the same pool: the default, margin, the best RPR
#: strategy of the final benchmark (docs/al_results/rule.md) and the paper's rule
COMPARED: tuple[str, ...] = (DEFAULT_STRATEGY, "margin", "margin_rpr_strat", PAPER_STRATEGY)


@dataclass
class DemoResult:
    """What the demo measured and wrote.

    Attributes:
        scores: the pool's :class:`ScoreTable` (with LPR and the model's logits).
        selection: the default strategy's proposals.
        selections: strategy name -> its proposals on the same pool, for each of
            :data:`COMPARED` (one entry when names coincide).
        train_labels: the labels of the training set (what the stratified quotas count).
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
    selections: dict[str, Selection]
    train_labels: np.ndarray

    @property
    def enrichment(self) -> float:
        """Rare share of the default's proposals over rare share of the pool (1 = none)."""
        return self.rare_share_proposals / self.rare_share_pool

    def rare_share(self, strategy: str) -> float:
        """Fraction of ``strategy``'s proposals that is a rare digit."""
        return float(np.isin(self.pool_labels[self.selections[strategy].indices], RARE).mean())

    def wrong_share(self, strategy: str) -> float:
        """Fraction of ``strategy``'s proposals that the model misclassifies."""
        idx = self.selections[strategy].indices
        return float((self.predicted[idx] != self.pool_labels[idx]).mean())


def fit_adam(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int
) -> nn.Module:
    """The demo's recipe: Adam (lr 1e-3), shuffled batches of 32, cross-entropy; eval mode after."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            opt.step()
    return model.eval()


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
    fit_adam(model, images[keep], labels[keep], epochs, seed)
    seconds = {"train": time.perf_counter() - t0}

    pool_x, pool_y = images[pool_idx], labels[pool_idx].numpy()
    with torch.no_grad():
        predicted = model(pool_x).argmax(1).numpy()
    t0 = time.perf_counter()
    table = score(model, pool_x, k=k, labels=pool_y, progress=progress)
    seconds["score"] = time.perf_counter() - t0
    train_y = labels[keep].numpy()
    labelled = Labelled(y=train_y)
    sels = {
        name: select(table, n, name, rng=seed, labelled=labelled)
        for name in dict.fromkeys(COMPARED)
    }
    sel = sels[DEFAULT_STRATEGY]

    train_counts = np.bincount(train_y, minlength=10)
    rare_pool = float(np.isin(pool_y, RARE).mean())
    rare_prop = float(np.isin(pool_y[sel.indices], RARE).mean())
    files = _write_files(out, table, sels, pool_x.numpy(), pool_y, predicted, lpr_rank)
    result = DemoResult(
        table, sel, pool_y, predicted, rare_pool, rare_prop, files, seconds, sels, train_y
    )
    _report(result, train_counts, k, lpr_rank, stream)
    return result


def _per_digit_rows(r: DemoResult, train_counts: np.ndarray, lpr_rank: int) -> list[list[Any]]:
    t, y = r.scores, r.pool_labels[r.scores.index]
    pred = r.predicted[r.scores.index]
    lpr_r = t.lpr_curve[:, lpr_rank - 1] if t.lpr_curve is not None else np.full(len(t), np.nan)
    proposed = [
        np.bincount(r.pool_labels[sel.indices], minlength=10) for sel in r.selections.values()
    ]
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
                *[int(c[d]) for c in proposed],
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
    names = list(r.selections)
    header = ["digit", "train", "pool", "accuracy", f"mean RPR@{k}", f"mean LPR@{lpr_rank}"]
    p(
        markdown_table(
            header + [f"proposed: {s}" for s in names], _per_digit_rows(r, train_counts, lpr_rank)
        )
    )
    p(
        f"\n{n} proposals from the same pool by each strategy (default: {DEFAULT_STRATEGY}; "
        f"the paper's rule: {PAPER_STRATEGY}, the {n} lowest RPR@{k}):\n"
    )
    rows = [
        [
            s + (" (default)" if s == DEFAULT_STRATEGY else ""),
            float(r.rare_share(s)),
            float(r.rare_share(s) / r.rare_share_pool),
            float(r.wrong_share(s)),
        ]
        for s in names
    ]
    head = [
        "strategy",
        f"share of digits {RARE[0]} and {RARE[1]}",
        "enrichment over the pool",
        "misclassified",
    ]
    p(markdown_table(head, rows))
    wrong = r.predicted != r.pool_labels
    p(
        f"\nPool: digits {RARE[0]} and {RARE[1]} are {r.rare_share_pool:.1%} of it; the model "
        f"misclassifies {wrong.mean():.1%} of it."
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
    sels: dict[str, Selection] | Selection,
    x: np.ndarray,
    y: np.ndarray,
    predicted: np.ndarray,
    lpr_rank: int,
) -> dict[str, Path]:
    """``scores.csv`` (ascending RPR) and ``proposals.csv``: every strategy's proposals in
    picking order, with the utility each was chosen by (empty for ``lowest``)."""
    if isinstance(sels, Selection):
        sels = {sels.strategy: sels}
    files = {"scores": out / "scores.csv", "proposals": out / "proposals.csv"}
    # the summary LPR column at the rank the console and proposals.csv use (lpr_at_3), not k
    lpr_at = lpr_rank if table.lpr_curve is not None else None
    table.ranked().to_csv(files["scores"], lpr_rank=lpr_at)
    pos = {int(i): j for j, i in enumerate(table.index)}
    with open(files["proposals"], "w") as fh:
        fh.write(f"strategy,rank,id,index,digit,predicted,rpr,lpr_{lpr_rank},utility\n")
        for name, sel in sels.items():
            util = sel.utility if sel.utility is not None else [None] * len(sel)
            for rank, (i, sid, s, u) in enumerate(
                zip(sel.indices, sel.ids, sel.scores, util, strict=True)
            ):
                lp = (
                    repr(float(table.lpr_curve[pos[int(i)], lpr_rank - 1]))
                    if table.lpr_curve is not None
                    else ""
                )
                uu = "" if u is None else repr(float(u))
                fh.write(
                    f"{name},{rank + 1},{sid},{i},{y[i]},{predicted[i]},{float(s)!r},{lp},{uu}\n"
                )
    try:
        import matplotlib
    except ImportError:
        return files  # plots are optional: the CSVs hold everything
    matplotlib.use("Agg")
    files.update(_plots(out, table, sels, x, y, lpr_rank))
    return files


def _plots(
    out: Path,
    table: ScoreTable,
    sels: dict[str, Selection],
    x: np.ndarray,
    y: np.ndarray,
    lpr_rank: int,
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

    n = len(next(iter(sels.values())))
    width = 0.8 / (len(sels) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, (name, sel) in enumerate(sels.items()):
        ax.bar(
            np.arange(10) + (j - len(sels) / 2) * width,
            np.bincount(y[sel.indices], minlength=10),
            width,
            label=name,
        )
    base = np.bincount(y, minlength=10) / len(y) * n
    ax.bar(
        np.arange(10) + len(sels) / 2 * width, base, width, label="pool's base rate", color="grey"
    )
    ax.set(xticks=range(10), xlabel="digit", ylabel="images", title=f"{n} proposals by digit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(files["histogram"], dpi=100)
    plt.close(fig)

    cols = min(n, 10)
    fig, axes_grid = plt.subplots(
        len(sels), cols, figsize=(1.2 * cols, 1.5 * len(sels)), squeeze=False
    )
    for row, (name, sel) in enumerate(sels.items()):
        for j, ax in enumerate(axes_grid[row]):
            ax.axis("off")
            if j < len(sel):
                i = sel.indices[j]
                ax.imshow(x[i, 0], cmap="gray_r")
                ax.set_title(f"{y[i]}: {sel.scores[j]:.2f}", fontsize=7)
        axes_grid[row][0].text(
            -0.3,
            0.5,
            name,
            transform=axes_grid[row][0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
    fig.suptitle(f"First {cols} proposals per strategy (digit: RPR)", fontsize=9)
    fig.tight_layout()
    fig.savefig(files["grid"], dpi=100)
    plt.close(fig)
    return files
