"""Pool-based active learning: learning curves of RPR against standard acquisitions.

``rprselect bench active-learning --dataset mnist|digits --out DIR [--rounds R] [--query-size Q]``

Every strategy gets the same model, budget and seeds. A seed fixes the pool, the start set, the
candidate draws and the weight initialisation of every retraining. The start set is a random
``init_fraction`` of the pool thinned like the paper's imbalanced set (Section 1.3): of each rare
digit (1 and 9) only ``max(1, round(rare_keep * count))`` stay labeled; the rest return to the
pool. Each round retrains the bias-free ``MNISTNet`` from scratch for a fixed number of epochs (a
skorch ``NeuralNetClassifier`` in a modAL ``ActiveLearner``), queries ``Q`` samples and reveals
their labels. BALD uses ``MNISTNet(dropout=...)``, the only way to get MC-dropout samples.
The acquisition functions live in :mod:`.al_strategies`; this module holds the loop, its report
and the CLI (about 500 lines: splitting the report out would need a file outside this issue).
Torch runs on one thread by default: on a shared 2-core machine two threads oversubscribe the
cores and made training up to 50x slower in our measurements.

The area under the learning curve is normalised by the span of labeled-set sizes,

.. math:: \\mathrm{AUC} = \\frac{1}{n_R - n_0} \\int_{n_0}^{n_R} \\mathrm{acc}(n)\\,dn
    \\in [0, 1]\\quad\\text{(trapezoid rule)}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import imbalance_indices, load_digits_tensors, load_mnist
from ..models import MNISTNet
from . import al_strategies as st
from .al_strategies import STRATEGIES
from .common import Stopwatch, machine_description, markdown_table, out_dir, write_json

__all__ = ["STRATEGIES", "ALSettings", "StrategyRun", "run_benchmark", "add_arguments", "run"]

#: Per-dataset defaults of the options left unset; ``--quick`` is a tiny run on digits.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": dict(rounds=3, query_size=10, epochs=20, candidates=200, init_fraction=0.03),
    "digits": dict(rounds=8, query_size=10, epochs=30, candidates=0, init_fraction=0.03),
    "mnist": dict(rounds=6, query_size=50, epochs=10, candidates=1000, init_fraction=0.01),
}


@dataclass(frozen=True)
class ALSettings:
    """Everything that defines a run; stored verbatim in ``results.json``.

    Attributes:
        dataset: ``"mnist"`` (28x28) or ``"digits"`` (scikit-learn 8x8).
        data_dir: MNIST folder (``None``: the default folder).
        rounds: query rounds after the start set; curves have ``rounds + 1`` points.
        query_size: samples labeled per round (``Q``).
        seeds: number of seeds, ``0 .. seeds-1``.
        pool_size: samples in the pool per seed (0: the whole training split).
        test_size: test samples, a fixed draw (0: the whole test split).
        init_fraction: start set as a fraction of the pool, before thinning the rare digits.
        rare: the rare digits.
        rare_keep: fraction of each rare digit of the start draw that stays labeled.
        epochs, batch_size, lr: Adam training from scratch every round.
        candidates: every strategy scores a fresh uniform draw of this many unlabeled samples per
            round (0: the whole unlabeled pool), a common cap on scoring cost.
        rpr_k: rank of the RPR.
        mc_samples: dropout passes of BALD (``T``).
        dropout: dropout probability of BALD's network.
        diverse_factor: ``rpr_diverse`` picks among ``factor * Q`` lowest-RPR candidates.
        threads: torch CPU threads.
        strategies: the strategies to run.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    rounds: int = 8
    query_size: int = 10
    seeds: int = 3
    pool_size: int = 0
    test_size: int = 0
    init_fraction: float = 0.03
    rare: tuple[int, ...] = (1, 9)
    rare_keep: float = 0.01
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    candidates: int = 0
    rpr_k: int = 10
    mc_samples: int = 20
    dropout: float = 0.25
    diverse_factor: int = 5
    threads: int = 1
    strategies: tuple[str, ...] = STRATEGIES

    def __post_init__(self) -> None:
        if self.dataset not in ("mnist", "digits"):
            raise ValueError(f"dataset must be 'mnist' or 'digits', got {self.dataset!r}")
        for name in ("rounds", "query_size", "seeds", "epochs", "batch_size", "mc_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pool_size", "test_size", "candidates"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.init_fraction < 1.0:
            raise ValueError(f"init_fraction must be in (0, 1), got {self.init_fraction}")
        if not 1 <= self.rpr_k <= 10:
            raise ValueError(f"rpr_k must satisfy 1 <= rpr_k <= 10, got {self.rpr_k}")
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown or not self.strategies:
            raise ValueError(
                f"strategies must be a non-empty subset of {STRATEGIES}, got {unknown}"
            )
        if 0 < self.candidates < self.query_size * self.diverse_factor:
            raise ValueError(
                f"candidates must be 0 or >= query_size * diverse_factor = "
                f"{self.query_size * self.diverse_factor}, got {self.candidates}"
            )


@dataclass
class StrategyRun:
    """One strategy's curves: lists over seeds, inner lists over rounds ``0..R``."""

    name: str
    n_labeled: list[list[int]] = field(default_factory=list)
    accuracy: list[list[float]] = field(default_factory=list)
    rare_accuracy: list[list[float]] = field(default_factory=list)
    rare_share: list[float] = field(default_factory=list)
    query_seconds: list[list[float]] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)


@dataclass
class _Split:
    pool_x: np.ndarray
    pool_y: np.ndarray
    init: np.ndarray  # positions into the pool
    test_x: np.ndarray
    test_y: np.ndarray


def _load(settings: ALSettings) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if settings.dataset == "mnist":
        xtr, ytr = load_mnist(settings.data_dir, "train", download=False)
        xte, yte = load_mnist(settings.data_dir, "test", download=False)
        return xtr, ytr, xte, yte
    x, y = load_digits_tensors()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(12345))
    n_test = int(0.3 * len(x))
    return x[perm[n_test:]], y[perm[n_test:]], x[perm[:n_test]], y[perm[:n_test]]


def _split(settings: ALSettings, data: tuple[torch.Tensor, ...], seed: int) -> _Split:
    xtr, ytr, xte, yte = data
    rng = np.random.default_rng([seed, 1])
    pool = rng.permutation(len(xtr))
    if settings.pool_size:
        pool = pool[: settings.pool_size]
    n_init = max(2, round(settings.init_fraction * len(pool)))
    draw = rng.choice(len(pool), size=n_init, replace=False)
    keep = imbalance_indices(ytr[pool[draw]], settings.rare, settings.rare_keep, seed=seed)
    test = np.random.default_rng(0).permutation(len(xte))
    if settings.test_size:
        test = test[: settings.test_size]
    return _Split(
        pool_x=xtr[pool].numpy(),
        pool_y=ytr[pool].numpy(),
        init=np.sort(draw[keep.numpy()]),
        test_x=xte[test].numpy(),
        test_y=yte[test].numpy(),
    )


def _make_net(settings: ALSettings, dropout: float) -> Any:
    try:
        from skorch import NeuralNetClassifier
    except ImportError as exc:
        raise ImportError(
            "the active-learning benchmark needs skorch: pip install rprselect[modal]"
        ) from exc
    return NeuralNetClassifier(
        MNISTNet,
        module__dropout=dropout,
        module__in_size=28 if settings.dataset == "mnist" else 8,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=settings.lr,
        max_epochs=settings.epochs,
        batch_size=settings.batch_size,
        train_split=None,
        iterator_train__shuffle=True,
        iterator_valid__batch_size=512,
        classes=list(range(10)),
        verbose=0,
        device="cpu",
    )


def _accuracies(learner: Any, split: _Split, rare: Sequence[int]) -> tuple[float, float]:
    pred = st.predict_logits(st.torch_module(learner), split.test_x).argmax(1).numpy()
    hit = pred == split.test_y
    is_rare = np.isin(split.test_y, list(rare))
    return float(hit.mean()), float(hit[is_rare].mean()) if is_rare.any() else float("nan")


def _fit_seed(round_: int, seed: int) -> None:
    torch.manual_seed(1_000_003 * seed + round_)


def _run_strategy(run_: StrategyRun, start: Any, split: _Split, cfg: ALSettings, seed: int) -> None:
    """One strategy, one seed, from the fitted start learner; appends to ``run_``."""
    learner = copy.deepcopy(start)
    learner.query_strategy = st.query_strategy(
        run_.name, seed=seed, k=cfg.rpr_k, mc_samples=cfg.mc_samples, factor=cfg.diverse_factor
    )
    labeled = np.zeros(len(split.pool_y), dtype=bool)
    labeled[split.init] = True
    rare = list(cfg.rare)
    acc, rare_acc = _accuracies(learner, split, rare)
    sizes, accs, rares, q_secs = [int(labeled.sum())], [acc], [rare_acc], []
    n_rare, train_s, cand_rng = 0, 0.0, np.random.default_rng([seed, 3])
    for r in range(1, cfg.rounds + 1):
        unl = np.flatnonzero(~labeled)
        if cfg.candidates and len(unl) > cfg.candidates:
            unl = np.sort(cand_rng.choice(unl, size=cfg.candidates, replace=False))
        t0 = time.perf_counter()
        idx, _ = learner.query(split.pool_x[unl], n_instances=cfg.query_size)
        q_secs.append(time.perf_counter() - t0)
        new = unl[np.asarray(idx, dtype=np.int64)]
        if len(np.unique(new)) != cfg.query_size or labeled[new].any():
            raise RuntimeError(f"strategy {run_.name} returned duplicate or labeled samples")
        labeled[new] = True
        n_rare += int(np.isin(split.pool_y[new], rare).sum())
        _fit_seed(r, seed)
        t0 = time.perf_counter()
        learner.teach(split.pool_x[new], split.pool_y[new])
        train_s += time.perf_counter() - t0
        acc, rare_acc = _accuracies(learner, split, rare)
        sizes.append(int(labeled.sum()))
        accs.append(acc)
        rares.append(rare_acc)
    run_.n_labeled.append(sizes)
    run_.accuracy.append(accs)
    run_.rare_accuracy.append(rares)
    run_.rare_share.append(n_rare / (cfg.rounds * cfg.query_size))
    run_.query_seconds.append(q_secs)
    run_.train_seconds.append(train_s)


def run_benchmark(
    settings: ALSettings, out: str | Path, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run every strategy for every seed, writing ``results.json`` after each seed.

    Returns:
        The results dictionary (also written to ``out/results.json``).
    """
    learner_class = st.active_learner_class()
    folder = out_dir(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        data = _load(settings)
        runs = {name: StrategyRun(name) for name in settings.strategies}
        sw, t_start = Stopwatch(), time.perf_counter()
        results: dict[str, Any] = {"start_sizes": [], "start_rare": []}
        for seed in range(settings.seeds):
            split = _split(settings, data, seed)
            results["start_sizes"].append(len(split.init))
            results["start_rare"].append(
                int(np.isin(split.pool_y[split.init], settings.rare).sum())
            )
            starts = {}
            for p in {settings.dropout if n == "bald" else 0.0 for n in settings.strategies}:
                _fit_seed(0, seed)
                with sw("start_fit"):
                    starts[p] = learner_class(
                        estimator=_make_net(settings, p),
                        X_training=split.pool_x[split.init],
                        y_training=split.pool_y[split.init],
                    )
            for name, run_ in runs.items():
                with sw(name):
                    start = starts[settings.dropout if name == "bald" else 0.0]
                    _run_strategy(run_, start, split, settings, seed)
                a, ra = run_.accuracy[-1], run_.rare_accuracy[-1]
                log(
                    f"seed {seed} {name:>16}: acc {a[0]:.3f} -> {a[-1]:.3f}, rare {ra[0]:.3f} -> "
                    f"{ra[-1]:.3f}, rare share {run_.rare_share[-1]:.2f}, query "
                    f"{np.mean(run_.query_seconds[-1]):.2f} s/round "
                    f"({time.perf_counter() - t_start:.0f} s)"
                )
            results.update(
                settings=dataclasses.asdict(settings),
                machine=machine_description(),
                rpr_source=st.rpr_source(),
                seeds_done=seed + 1,
                complete=seed + 1 == settings.seeds,
                pool_size=len(split.pool_y),
                test_size=len(split.test_y),
                wall_seconds=time.perf_counter() - t_start,
                stage_seconds=dict(sw.seconds),
                strategies={n: dataclasses.asdict(r) for n, r in runs.items()},
                summary=summarise(runs),
            )
            write_json(folder / "results.json", results)
        return results
    finally:
        torch.set_num_threads(threads)


def _auc(sizes: Sequence[int], acc: Sequence[float]) -> float:
    """Trapezoid area under ``acc`` against ``sizes``, divided by the span of sizes."""
    n, a = np.asarray(sizes, dtype=np.float64), np.asarray(acc, dtype=np.float64)
    return float(np.sum(0.5 * (a[1:] + a[:-1]) * np.diff(n)) / (n[-1] - n[0]))


def _mean_std(v: Any) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(np.nanmean(a)), float(np.nanstd(a))


def summarise(runs: dict[str, StrategyRun]) -> dict[str, dict[str, Any]]:
    """Per strategy: mean and std over seeds of the curves, AUCs, rare share and query time."""
    out: dict[str, dict[str, Any]] = {}
    for name, r in runs.items():
        acc, rare = np.asarray(r.accuracy), np.asarray(r.rare_accuracy)
        out[name] = {
            "n_labeled": np.asarray(r.n_labeled, dtype=np.float64).mean(0).tolist(),
            "accuracy_mean": acc.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(),
            "rare_accuracy_mean": np.nanmean(rare, 0).tolist(),
            "rare_accuracy_std": np.nanstd(rare, 0).tolist(),
            "auc": _mean_std([_auc(n, a) for n, a in zip(r.n_labeled, acc, strict=True)]),
            "rare_auc": _mean_std([_auc(n, a) for n, a in zip(r.n_labeled, rare, strict=True)]),
            "final_accuracy": _mean_std(acc[:, -1]),
            "final_rare_accuracy": _mean_std(rare[:, -1]),
            "rare_share": _mean_std(r.rare_share),
            "query_seconds_per_round": _mean_std([np.mean(q) for q in r.query_seconds]),
        }
    return out


def ranking_table(summary: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the strategies, best area under the learning curve first."""
    order = sorted(summary, key=lambda n: -summary[n]["auc"][0])

    def pm(v: Sequence[float], digits: int = 3) -> str:
        return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"

    rows = [
        [
            i + 1,
            n,
            pm(summary[n]["auc"]),
            pm(summary[n]["rare_auc"]),
            pm(summary[n]["final_accuracy"]),
            pm(summary[n]["final_rare_accuracy"]),
            pm(summary[n]["rare_share"], 2),
            pm(summary[n]["query_seconds_per_round"], 2),
        ]
        for i, n in enumerate(order)
    ]
    header = [
        "rank",
        "strategy",
        "AUC",
        "rare AUC",
        "final acc",
        "final rare acc",
        "rare share of queries",
        "query s/round",
    ]
    return markdown_table(header, rows)


def _plot(summary: dict[str, dict[str, Any]], key: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary.items():
        n = np.asarray(s["n_labeled"])
        m, sd = np.asarray(s[f"{key}_mean"]), np.asarray(s[f"{key}_std"])
        style = "-" if name.startswith("rpr") else "--"
        (line,) = ax.plot(n, m, style, marker="o", ms=3, label=name)
        ax.fill_between(n, m - sd, m + sd, color=line.get_color(), alpha=0.12)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: str | Path) -> str:
    """Write ``report.md`` and the two learning-curve PNGs; return the ranking table."""
    folder = out_dir(out)
    summary = results["summary"]
    rare = results["settings"]["rare"]
    _plot(summary, "accuracy", "test accuracy (mean ± std)", folder / "curve_accuracy.png")
    _plot(summary, "rare_accuracy", f"accuracy on digits {rare}", folder / "curve_rare.png")
    table = ranking_table(summary)
    s = results["settings"]
    lines = [
        f"# Active learning on {s['dataset']}: strategies ranked by area under the curve",
        "",
        f"{results['seeds_done']} seed(s); pool {results['pool_size']}, test "
        f"{results['test_size']}; {s['rounds']} rounds of {s['query_size']} queries from a start "
        f"of {results['start_sizes']} labels (per seed); {s['epochs']} epochs "
        f"(Adam, lr {s['lr']}, batch {s['batch_size']}) from scratch per round; candidates per "
        f"round {s['candidates'] or 'all'}; RPR rank k={s['rpr_k']} via {results['rpr_source']}.",
        f"Machine: {results['machine']}; wall time {results['wall_seconds']:.0f} s.",
        "",
        table,
        "",
        "AUC: normalised area under test accuracy against labeled-set size; rare: digits "
        f"{rare}; mean ± std over seeds. Curves: curve_accuracy.png, curve_rare.png.",
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rprselect bench active-learning``."""
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="digits")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (idx .gz files)")
    parser.add_argument("--out", default=None, help="output folder (default out/al_DATASET)")
    parser.add_argument("--rounds", type=int, default=None, help="query rounds")
    parser.add_argument("--query-size", type=int, default=None, help="samples per round (Q)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (3)")
    parser.add_argument("--pool-size", type=int, default=0, help="pool subset, 0 = all")
    parser.add_argument("--test-size", type=int, default=0, help="test subset, 0 = all")
    parser.add_argument("--init-fraction", type=float, default=None, help="start set / pool")
    parser.add_argument("--rare", type=int, nargs="+", default=[1, 9], help="rare digits")
    parser.add_argument("--rare-keep", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--candidates", type=int, default=None, help="scored per round, 0 = all")
    parser.add_argument("--rpr-k", type=int, default=10)
    parser.add_argument("--mc-samples", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--diverse-factor", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: no oversubscription)"
    )
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument(
        "--quick", action="store_true", help="digits, tiny settings, all strategies"
    )


def settings_from_args(args: argparse.Namespace) -> ALSettings:
    """Resolve ``--quick`` and the defaults into :class:`ALSettings`."""
    base = _DEFAULTS["quick" if args.quick else args.dataset]
    pick = {
        key: getattr(args, key) if getattr(args, key) is not None else v for key, v in base.items()
    }
    return ALSettings(
        dataset="digits" if args.quick else args.dataset,
        data_dir=args.data_dir,
        seeds=args.seeds,
        pool_size=args.pool_size,
        test_size=args.test_size,
        rare=tuple(args.rare),
        rare_keep=args.rare_keep,
        batch_size=args.batch_size,
        lr=args.lr,
        rpr_k=args.rpr_k,
        mc_samples=args.mc_samples,
        dropout=args.dropout,
        diverse_factor=args.diverse_factor,
        threads=args.threads,
        strategies=tuple(args.strategies),
        **pick,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, write results.json, report.md and the PNGs; print the table last."""
    settings = settings_from_args(args)
    out = Path(args.out or f"out/al_{settings.dataset}")
    results = run_benchmark(settings, out)
    table = write_outputs(results, out)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rprselect.benchmarks.active_learning``."""
    parser = argparse.ArgumentParser(prog="rprselect bench active-learning", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
