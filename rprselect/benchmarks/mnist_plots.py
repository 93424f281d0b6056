"""Summaries, Figures 1-3 and the Markdown report of the MNIST class-imbalance benchmark.

Split from :mod:`rprselect.benchmarks.mnist_imbalance` so that each module stays small: this one
only reads the per-image arrays of an ``Analysis`` and the JSON-ready summaries made from them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rprselect.benchmarks.common import markdown_table

if TYPE_CHECKING:
    from rprselect.benchmarks.mnist_imbalance import Analysis

__all__ = [
    "PAPER",
    "BOX_RANKS",
    "comparison_rows",
    "plot_figures",
    "print_and_write_report",
    "summarise",
]

#: the numbers the paper reports (Section 2.1, Figures 2 and 3)
PAPER: dict[str, Any] = {
    "epochs": 50,
    "accuracy": {"balanced": 0.9864, "unbalanced": 0.9329},
    "failures": {"balanced": 136, "unbalanced": 671},
    "lowest_rpr": {"balanced": "8 slowest to rise", "unbalanced": "{1, 9} (text: 1, 8, 9 slowest)"},
    "lowest_lpr": {"balanced": "not stated", "unbalanced": "{1, 9}"},
}
#: ranks of the box plots (paper Figures 2 and 3)
BOX_RANKS: tuple[int, ...] = (2, 3, 4, 5, 6)
_MODELS = ("balanced", "unbalanced")
NUM_CLASSES = 10
_HEADER = ["quantity", "paper balanced", "ours balanced", "paper unbalanced", "ours unbalanced"]


def _per_digit(values: np.ndarray, labels: np.ndarray, stat: Any = np.mean) -> list[Any]:
    """``stat(values, axis=0)`` over the images of each digit; NaN for a digit with none."""
    nan = np.full(values.shape[1:], np.nan)
    return [
        (stat(values[labels == d], axis=0) if (labels == d).any() else nan).tolist()
        for d in range(NUM_CLASSES)
    ]


def summarise(a: Analysis) -> dict[str, Any]:
    """Accuracies, ratio curves and the rank-10 identity check of one model, JSON-ready.

    Per-digit arrays are indexed by digit (length 10); curves are indexed by rank-1 (length k).
    ``lowest_rpr_digits`` / ``lowest_lpr_digits`` sort the digits by the mean over ranks 2..6 of
    their median ratio, ascending.
    """
    k = a.pred_rank.shape[1]
    correct = a.pred_tensor == a.labels
    correct_rank = a.pred_rank == a.labels[:, None]
    fail_t = set(np.flatnonzero(~correct).tolist())
    fail_r = set(np.flatnonzero(~correct_rank[:, k - 1]).tolist())
    out: dict[str, Any] = {
        "n_test": len(a.labels),
        "test_counts": np.bincount(a.labels, minlength=NUM_CLASSES).tolist(),
        "tensor_accuracy": float(correct.mean()),
        "tensor_accuracy_per_digit": _per_digit(correct.astype(float), a.labels),
        "rank_k_accuracy": correct_rank.mean(0).tolist(),
        "rank_k_accuracy_per_digit": _per_digit(correct_rank.astype(float), a.labels),
        "rank10_identity": {
            "tensor_failures": len(fail_t),
            "rank10_failures": len(fail_r),
            "common_failures": len(fail_t & fail_r),
            "identical": fail_t == fail_r,
            "prediction_disagreements": int((a.pred_rank[:, k - 1] != a.pred_tensor).sum()),
            "max_relative_gap": a.max_gap,
        },
        "max_svd_residual": a.max_residual,
        "lpr_full_rank_max_deviation": float(np.abs(a.lpr[:, k - 1] - 1.0).max()),
        "float32_prediction_disagreements": int((a.pred_float32 != a.pred_tensor).sum()),
    }
    for metric, values in (("rpr", a.rpr), ("lpr", a.lpr)):
        stats = {
            name: _per_digit(values, a.labels, functools.partial(np.quantile, q=q))
            for name, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
        }
        for name, fn in (("mean", np.mean), ("min", np.min), ("max", np.max)):
            stats[name] = _per_digit(values, a.labels, fn)
        out[metric] = stats
        score = np.asarray(stats["median"])[:, 1:6].mean(1)  # ranks 2..6; NaN (absent) last
        out[f"lowest_{metric}_digits"] = np.argsort(score, kind="stable").tolist()
        out[f"{metric}_monotone"] = bool((np.diff(values, axis=1) >= -1e-12).all())
    return out


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "the mnist-imbalance figures need matplotlib: pip install rprselect[extras]"
        ) from exc
    return plt


def plot_figures(
    folder: Path, analyses: dict[str, Analysis], summaries: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Write Figures 1-3, balanced (left) and unbalanced (right) side by side.

    Args:
        folder: output folder.
        analyses: per-image results of each model (``rpr`` and ``lpr`` of shape ``(N, K)``).
        summaries: :func:`~rprselect.benchmarks.mnist_imbalance.summarise` of each model.

    Returns:
        Figure name -> file name inside ``folder``.
    """
    plt = _pyplot()
    files = {
        "fig1": _figure_accuracy(plt, folder / "fig1_rank_k_accuracy.png", summaries),
        "fig2": _figure_boxes(plt, folder / "fig2_rpr.png", analyses, "rpr", "RPR"),
        "fig3": _figure_boxes(plt, folder / "fig3_lpr.png", analyses, "lpr", "LPR (±2 label map)"),
    }
    return {key: path.name for key, path in files.items()}


def _figure_accuracy(plt: Any, path: Path, summaries: dict[str, dict[str, Any]]) -> Path:
    """Figure 1: per-digit accuracy of the rank-k CNN against k, the tensor model at the right."""
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharey=True)
    for ax, name in zip(axes, _MODELS, strict=True):
        s = summaries[name]
        curves = np.asarray(s["rank_k_accuracy_per_digit"])  # (10, K)
        k = curves.shape[1]
        ranks = np.arange(1, k + 1)
        for d in range(curves.shape[0]):
            ax.plot(ranks, curves[d], "o-", ms=3, color=colours(d), label=f"digit {d}")
            ax.plot([k + 1], [s["tensor_accuracy_per_digit"][d]], "*", ms=9, color=colours(d))
        ax.axhline(s["tensor_accuracy"], ls="--", color="k", lw=1, label="tensor model, all")
        ax.set_xticks([*ranks, k + 1], [*map(str, ranks), "F(x)"])
        ax.set_xlabel("rank k of the CNN  (★ = tensor model per digit)")
        ax.set_title(f"{name}: tensor accuracy {s['tensor_accuracy']:.4f}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle("Figure 1: per-digit accuracy of the rank-k CNN (Eq. 8)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure_boxes(
    plt: Any, path: Path, analyses: dict[str, Analysis], metric: str, label: str
) -> Path:
    """Figures 2 and 3: a box per digit at each rank of :data:`BOX_RANKS`."""
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8), sharey=True)
    width, gap = 0.8, 2
    for ax, name in zip(axes, _MODELS, strict=True):
        a = analyses[name]
        values = getattr(a, metric)
        for ri, r in enumerate(BOX_RANKS):
            data = [values[a.labels == d, r - 1] for d in range(10)]
            present = [d for d in range(10) if len(data[d])]
            pos = [ri * (10 + gap) + d for d in present]
            box = ax.boxplot(
                [data[d] for d in present],
                positions=pos,
                widths=width,
                patch_artist=True,
                flierprops={"markersize": 1, "alpha": 0.3},
                medianprops={"color": "k"},
            )
            for patch, d in zip(box["boxes"], present, strict=True):
                patch.set_facecolor(colours(d))
        centres = [ri * (10 + gap) + 4.5 for ri in range(len(BOX_RANKS))]
        ax.set_xticks(centres, [f"rank {r}" for r in BOX_RANKS])
        ax.set_title(name)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(label)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(d)) for d in range(10)]
    axes[1].legend(
        handles,
        [str(d) for d in range(10)],
        title="digit",
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    number = 2 if metric == "rpr" else 3
    fig.suptitle(f"Figure {number}: {label} per digit at ranks {BOX_RANKS[0]}-{BOX_RANKS[-1]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _digits(ds: list[int]) -> str:
    return "{" + ", ".join(map(str, sorted(ds))) + "}"


def comparison_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Rows of the paper-versus-ours table (columns :data:`_HEADER`)."""
    m = results["models"]
    train = results["training"]

    def ours(fn: Any) -> list[Any]:
        return [fn(name) for name in _MODELS]

    def pair(paper: dict[str, Any], fn: Any) -> list[Any]:
        b, u = ours(fn)
        return [paper["balanced"], b, paper["unbalanced"], u]

    def identity(name: str) -> str:
        r = m[name]["rank10_identity"]
        verdict = "identical" if r["identical"] else "NOT identical"
        return f"{r['common_failures']} of {r['tensor_failures']} ({verdict})"

    def epochs(name: str) -> Any:
        return train[name]["epochs"] if name in train else "?"

    def n_train(name: str) -> Any:
        return train[name]["n_train"] if name in train else "?"

    def per_digit(name: str) -> str:
        acc = m[name]["tensor_accuracy_per_digit"]
        return f"{acc[1]:.4f} / {acc[9]:.4f}"

    def lpr10(name: str) -> str:
        return f"1 (max deviation {m[name]['lpr_full_rank_max_deviation']:.1e})"

    return [
        ["epochs", 50, *ours(epochs)[:1], 50, *ours(epochs)[1:]],
        [
            "training images",
            60000,
            ours(n_train)[0],
            "60000 less 99% of 1s and 9s",
            ours(n_train)[1],
        ],
        ["test images", 10000, m["balanced"]["n_test"], 10000, m["unbalanced"]["n_test"]],
        ["tensor model accuracy", *pair(PAPER["accuracy"], lambda n: m[n]["tensor_accuracy"])],
        ["rank-10 CNN accuracy", *pair(PAPER["accuracy"], lambda n: m[n]["rank_k_accuracy"][-1])],
        [
            "tensor model failures",
            *pair(PAPER["failures"], lambda n: m[n]["rank10_identity"]["tensor_failures"]),
        ],
        [
            "rank-10 failures shared with tensor model",
            *pair({k: f"{v} of {v} (identical)" for k, v in PAPER["failures"].items()}, identity),
        ],
        [
            "tensor accuracy on digit 1 / digit 9",
            *pair({"balanced": "(Fig. 1)", "unbalanced": "(Fig. 1)"}, per_digit),
        ],
        [
            "2 lowest median RPR, ranks 2-6",
            *pair(PAPER["lowest_rpr"], lambda n: _digits(m[n]["lowest_rpr_digits"][:2])),
        ],
        [
            "2 lowest median LPR, ranks 2-6",
            *pair(PAPER["lowest_lpr"], lambda n: _digits(m[n]["lowest_lpr_digits"][:2])),
        ],
        ["LPR at rank 10", *pair({"balanced": "exactly 1", "unbalanced": "exactly 1"}, lpr10)],
    ]


def _per_digit_rows(results: dict[str, Any]) -> list[list[Any]]:
    m, train = results["models"], results["training"]
    rows = []
    for d in range(10):
        row: list[Any] = [d, m["balanced"]["test_counts"][d]]
        row += [train[n]["train_counts"][d] if n in train else "?" for n in _MODELS]
        row += [m[n]["tensor_accuracy_per_digit"][d] for n in _MODELS]
        for metric in ("rpr", "lpr"):
            row += [float(np.mean(m[n][metric]["median"][d][1:6])) for n in _MODELS]
        rows.append(row)
    return rows


def print_and_write_report(
    folder: Path, results: dict[str, Any], rows: list[list[Any]], note: str = ""
) -> Path:
    """Write ``report.md`` and print its summary, the comparison table last."""
    s = results["settings"]
    table = markdown_table(_HEADER, rows)
    epochs = {results["training"][n]["epochs"] for n in _MODELS if n in results["training"]}
    trained = ", ".join(map(str, sorted(epochs))) or "?"
    epoch_line = (
        f"Trained for {trained} of the paper's 50 epochs" + (f" {note}" if note else ".")
        if epochs != {50}
        else "Trained for the paper's 50 epochs." + (f" {note}" if note else "")
    )
    parts = [
        "# MNIST class imbalance (paper Section 1.3 and 2.1, Figures 1-3)",
        "",
        epoch_line,
        "",
        f"Settings: SGD lr {s['lr']}, batch {s['batch_size']}, cross-entropy, seed {s['seed']}, "
        f"device {s['device']}, torch threads {s['threads']}, quick={s['quick']}, "
        f"reuse={s['reuse']}; unbalanced set keeps {s['imbalance']['keep_fraction']:.0%} of "
        f"digits {s['imbalance']['rare']}; analysis: exact dense SVD of the 10x784 A[x] in "
        f"{s['analysis_dtype']}, k = 10. Machine: {results['machine']}.",
        "",
        "## Comparison with the paper",
        "",
        "'Lowest' digits sort the digits by the mean over ranks 2..6 of their median ratio.",
        "",
        table,
        "",
        "## Per digit",
        "",
        "Median RPR and LPR are averaged over ranks 2..6.",
        "",
        markdown_table(
            [
                "digit",
                "test images",
                "train balanced",
                "train unbalanced",
                "acc balanced",
                "acc unbalanced",
                "RPR balanced",
                "RPR unbalanced",
                "LPR balanced",
                "LPR unbalanced",
            ],
            _per_digit_rows(results),
        ),
        "",
        "## Training",
        "",
        _training_table(results),
        "",
        "## Wall time per stage",
        "",
        markdown_table(["stage", "seconds"], [[k, v] for k, v in results["seconds"].items()]),
        "",
        "## Figures",
        "",
        *[f"![{k}]({v})" for k, v in results["figures"].items()],
        "",
    ]
    path = folder / "report.md"
    path.write_text("\n".join(parts))
    print(f"results: {folder / 'results.json'}, report: {path}")
    print(markdown_table(["stage", "seconds"], [[k, v] for k, v in results["seconds"].items()]))
    print(epoch_line)
    print(table)
    return path


def _training_table(results: dict[str, Any]) -> str:
    train = results["training"]
    if not train:
        return "(models loaded with --reuse; no training log found)"
    n_epochs = max(len(log["loss"]) for log in train.values())
    header = ["epoch"]
    for n in train:
        header += [f"loss {n}", f"seconds {n}"]
    rows = []
    for e in range(n_epochs):
        row: list[Any] = [e + 1]
        for log in train.values():
            row += [log["loss"][e], log["seconds"][e]] if e < len(log["loss"]) else ["", ""]
        rows.append(row)
    return markdown_table(header, rows)
