"""Pool-based active learning under current evaluation practice (Munjal et al. CVPR 2022;
Lüth et al. NeurIPS 2023): paired seeds, two start budgets, learning-curve AUC with 95%
intervals, paired Wilcoxon tests against random and margin, Ash et al.'s penalty matrix,
rare-class recall, the rare share of queries and query seconds.

``rprselect bench active-learning --dataset digits|mnist|npz:PATH --out DIR [--quick]``

One unit is (strategy, seed, budget) (see :mod:`.al_loop`); each is written to
``DIR/units/b{budget}/{strategy}/seed{seed}.json`` as soon as it finishes and skipped on a
restart, so a killed run resumes. ``--workers N`` runs units in N processes (one torch thread
each). The strategies are in :mod:`.al_strategies`, the statistics in :mod:`.al_report`.
``--combine DIR [DIR ...]`` ranks strategies across finished runs by the rule of
docs/acquisition.md instead of running anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import al_report as rep
from . import al_strategies as st
from .al_loop import load_data, run_unit
from .common import machine_description, markdown_table, out_dir, write_json

__all__ = ["ALSettings", "run_benchmark", "combine", "add_arguments", "run"]

#: Per-dataset defaults of the options left unset.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": dict(
        budgets=(20, 40), seeds=2, rounds=2, query_size=10, steps=20, candidates=100,
        test_size=150, width=8, hidden=32,
        strategies=("random", "margin", "lowest", "margin_rpr_strat"),
    ),
    "digits": dict(
        budgets=(30, 80), seeds=10, rounds=8, query_size=10, steps=100, candidates=500,
        test_size=0, width=16, hidden=64, strategies=st.FINAL,
    ),
    "mnist": dict(
        budgets=(40, 150), seeds=5, rounds=5, query_size=30, steps=100, candidates=300,
        test_size=1000, width=8, hidden=64, strategies=st.FINAL_MNIST,
    ),
}  # fmt: skip
_DEFAULTS["npz"] = dict(_DEFAULTS["mnist"], test_size=0)


@dataclass(frozen=True)
class ALSettings:
    """Everything that defines a run; stored verbatim in ``results.json``.

    Attributes:
        dataset: ``"digits"``, ``"mnist"`` or ``"npz:PATH"``.
        data_dir: MNIST folder (``None``: the default).
        budgets: start-set sizes drawn before thinning the rare classes.
        seeds: paired seeds ``seed_offset .. seed_offset + seeds - 1``.
        seed_offset: first seed (pilots use other seeds than the final runs).
        rounds, query_size: query rounds and samples per round.
        steps, batch_size, lr: Adam steps from scratch per round.
        width, hidden: the CNN's channels and hidden units; dropout: BALD's network.
        pool_size, test_size, candidates: 0 = all.
        rare, rare_keep: rare classes and the fraction of them kept in the start set.
        rpr_k: ranks of the RPR curve; mc_samples: BALD's dropout passes.
        strategies: names of :data:`.al_strategies.STRATEGIES`.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    budgets: tuple[int, ...] = (30, 80)
    seeds: int = 10
    seed_offset: int = 0
    rounds: int = 8
    query_size: int = 10
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    width: int = 16
    hidden: int = 64
    dropout: float = 0.25
    pool_size: int = 0
    test_size: int = 0
    candidates: int = 0
    rare: tuple[int, ...] | None = None
    rare_keep: float = 0.01
    rpr_k: int = 10
    mc_samples: int = 20
    strategies: tuple[str, ...] = st.FINAL

    def __post_init__(self) -> None:
        if self.dataset not in ("mnist", "digits") and not self.dataset.startswith("npz:"):
            raise ValueError(
                f"dataset must be 'digits', 'mnist' or 'npz:PATH', got {self.dataset!r}"
            )
        for name in ("seeds", "rounds", "query_size", "steps", "batch_size", "width", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pool_size", "test_size", "candidates", "seed_offset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.budgets or min(self.budgets) < 2:
            raise ValueError(f"budgets must be sizes >= 2, got {self.budgets}")
        if not 0 < self.rare_keep <= 1:
            raise ValueError(f"rare_keep must be in (0, 1], got {self.rare_keep}")
        unknown = sorted(set(self.strategies) - set(st.STRATEGIES))
        if unknown or not self.strategies:
            raise ValueError(f"strategies must be names of {sorted(st.STRATEGIES)}, got {unknown}")
        if 0 < self.candidates < self.query_size:
            raise ValueError(f"candidates must be 0 or >= query_size, got {self.candidates}")


def _unit_path(folder: Path, strategy: str, seed: int, budget: int) -> Path:
    return folder / "units" / f"b{budget}" / strategy / f"seed{seed}.json"


def _work(args: tuple[ALSettings, str, int, int, str]) -> tuple[str, int, int, float]:
    """Run one unit in a worker process and write its file."""
    cfg, strategy, seed, budget, folder = args
    torch.set_num_threads(1)
    data = _data_cache(cfg)
    res = run_unit(cfg, data, strategy, seed, budget)
    path = _unit_path(Path(folder), strategy, seed, budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    return strategy, seed, budget, float(res["seconds"])


_DATA: dict[tuple[str, str | None], Any] = {}


def _data_cache(cfg: ALSettings) -> Any:
    key = (cfg.dataset, cfg.data_dir)
    if key not in _DATA:
        _DATA[key] = load_data(cfg.dataset, cfg.data_dir, cfg.rare)
    return _DATA[key]


def run_benchmark(
    cfg: ALSettings, out: str | Path, workers: int = 1, log: Any = print
) -> dict[str, Any]:
    """Run the missing units, then aggregate every unit of ``cfg`` into ``results.json``."""
    folder = out_dir(out)
    seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seeds)
    todo = [
        (cfg, s, seed, b, str(folder))
        for b in cfg.budgets
        for seed in seeds
        for s in cfg.strategies
        if not _unit_path(folder, s, seed, b).exists()
    ]
    total = len(cfg.budgets) * cfg.seeds * len(cfg.strategies)
    log(f"{total - len(todo)} of {total} units done; running {len(todo)} with {workers} worker(s)")
    t0 = time.perf_counter()
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as ex:
            for i, (s, seed, b, sec) in enumerate(ex.map(_work, todo)):
                log(
                    f"[{i + 1}/{len(todo)}] b{b} seed {seed} {s}: {sec:.1f} s "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
    else:
        threads = torch.get_num_threads()
        try:
            for i, job in enumerate(todo):
                s, seed, b, sec = _work(job)
                log(
                    f"[{i + 1}/{len(todo)}] b{b} seed {seed} {s}: {sec:.1f} s "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
        finally:
            torch.set_num_threads(threads)
    return aggregate(cfg, folder)


def aggregate(cfg: ALSettings, folder: Path) -> dict[str, Any]:
    """Read the unit files of ``cfg`` and write ``results.json`` with the statistics."""
    data = _data_cache(cfg)
    seeds = list(range(cfg.seed_offset, cfg.seed_offset + cfg.seeds))
    per_budget: dict[str, Any] = {}
    seconds = 0.0
    for b in cfg.budgets:
        units = {
            s: [json.loads(_unit_path(folder, s, seed, b).read_text()) for seed in seeds]
            for s in cfg.strategies
        }
        seconds += sum(u["seconds"] for us in units.values() for u in us)
        names = list(cfg.strategies)
        P = rep.penalty_matrix({s: np.asarray([u["accuracy"] for u in units[s]]) for s in names})
        per_budget[str(b)] = {
            "summary": rep.summarise(units, data.rare),
            "penalty": P.tolist(),
            "start_sizes": [u["start_size"] for u in units[names[0]]],
            "start_rare": [u["start_rare"] for u in units[names[0]]],
            "pool_size": units[names[0]][0]["pool_size"],
            "test_size": units[names[0]][0]["test_size"],
        }
    results = {
        "settings": dataclasses.asdict(cfg),
        "rare": list(data.rare),
        "machine": machine_description(),
        "unit_seconds_total": seconds,
        "groups": {s: st.group_of(s) for s in cfg.strategies},
        "budgets": per_budget,
    }
    write_json(folder / "results.json", results)
    return results


def _wins(names: Sequence[str], P: np.ndarray) -> dict[str, float]:
    return {n: float(P[i].sum() - P[:, i].sum()) for i, n in enumerate(names)}


def write_outputs(results: dict[str, Any], out: str | Path) -> str:
    """``report.md``, learning-curve and penalty PNGs; returns the tables printed last."""
    folder = out_dir(out)
    s = results["settings"]
    names = list(s["strategies"])
    groups = results["groups"]
    lines = [
        f"# Active learning on {s['dataset']}: {s['seeds']} paired seeds, budgets {s['budgets']}",
        "",
        f"{s['rounds']} rounds of {s['query_size']} queries; {s['steps']} Adam steps "
        f"(lr {s['lr']}, batch {s['batch_size']}) from scratch per round on a bias-free CNN "
        f"(width {s['width']}, hidden {s['hidden']}); candidates per round "
        f"{s['candidates'] or 'all unlabelled'}; RPR curve ranks 1..{s['rpr_k']}; rare classes "
        f"{results['rare']} thinned to {s['rare_keep']:.0%} in the start set; seeds "
        f"{s['seed_offset']}..{s['seed_offset'] + s['seeds'] - 1}.",
        f"Machine: {results['machine']}; summed unit time {results['unit_seconds_total']:.0f} s.",
        "",
        "AUC: normalised area under test accuracy vs labelled-set size, mean over seeds with a "
        "95% t-interval. p: two-sided paired Wilcoxon signed-rank on per-seed AUCs, (+/-) the "
        "sign of the mean difference. Rare-class AUC: the same for the mean recall of the rare "
        "classes. Penalty: Ash et al.'s matrix (row sum - column sum).",
    ]
    tables = []
    P_all = np.zeros((len(names), len(names)))
    for b, blk in results["budgets"].items():
        P = np.asarray(blk["penalty"])
        P_all += P
        t = rep.budget_table(blk["summary"], groups, _wins(names, P))
        tables.append(f"### {s['dataset']}, start budget {b} (start sizes {blk['start_sizes']})")
        tables.append("")
        tables.append(t)
        tables.append("")
        rep.plot_curves(
            blk["summary"],
            "accuracy",
            "test accuracy",
            folder / f"curve_b{b}.png",
            f"{s['dataset']}, budget {b}",
        )
        rep.plot_curves(
            blk["summary"],
            "rare_recall",
            "rare-class recall",
            folder / f"curve_rare_b{b}.png",
            f"{s['dataset']}, budget {b}",
        )
    rep.plot_penalty(names, P_all, folder / "penalty.png")
    lines += [
        "",
        *tables,
        "## Penalty matrix, summed over budgets",
        "",
        rep.penalty_table(names, P_all),
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return "\n".join(tables)


def combine(folders: Sequence[str | Path], strategies: Sequence[str] | None = None) -> str:
    """The selection rule of docs/acquisition.md over finished runs, as a Markdown table.

    Each (run, budget) is a cell. A strategy's primary score is its mean rank of mean AUC over
    the cells; the tie-breaker its mean rank of mean rare-class AUC; then no SVD before SVD,
    then the name. Only strategies present in every cell are ranked.
    """
    cells = []
    for f in folders:
        res = json.loads((Path(f) / "results.json").read_text())
        for b, blk in res["budgets"].items():
            cells.append((f"{res['settings']['dataset']}/b{b}", blk["summary"], res["groups"]))
    common = set.intersection(*(set(c[1]) for c in cells))
    names = [n for n in (strategies or sorted(common)) if n in common]
    auc_rank = rep.mean_rank({n: [c[1][n]["auc"][0] for c in cells] for n in names})
    rare_rank = rep.mean_rank({n: [c[1][n]["rare_auc"][0] for c in cells] for n in names})
    svd = {n: cells[0][2].get(n) == "RPR" for n in names}
    order = sorted(names, key=lambda n: (auc_rank[n], rare_rank[n], svd[n], n))
    ok = {n: st.eligible(n) for n in names}
    rows = [
        [i + 1, n, cells[0][2].get(n, "RPR"), "yes" if ok[n] else "no", f"{auc_rank[n]:.2f}",
         f"{rare_rank[n]:.2f}", *[f"{c[1][n]['auc'][0]:.3f}" for c in cells]]
        for i, n in enumerate(order)
    ]  # fmt: skip
    head = ["rank", "strategy", "family", "eligible", "mean AUC rank", "mean rare-AUC rank",
            *[f"AUC {c[0]}" for c in cells]]  # fmt: skip
    winner = next((n for n in order if ok[n]), None)
    return markdown_table(head, rows) + f"\n\nDefault by the rule: {winner}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rprselect bench active-learning``."""
    parser.add_argument(
        "--dataset",
        "--data",
        dest="dataset",
        default="digits",
        help="digits, mnist or npz:PATH (MedMNIST layout)",
    )
    parser.add_argument("--data-dir", default=None, help="MNIST folder (idx .gz files)")
    parser.add_argument("--out", default=None, help="output folder (default out/al_DATASET)")
    for name, kind, help_ in (
        ("--seeds", int, "paired seeds"),
        ("--seed-offset", int, "first seed (0)"),
        ("--rounds", int, "query rounds"),
        ("--query-size", int, "samples per round"),
        ("--steps", int, "Adam steps per round"),
        ("--candidates", int, "candidates scored per round, 0 = all"),
        ("--pool-size", int, "pool subset, 0 = all"),
        ("--test-size", int, "test subset, 0 = all"),
        ("--width", int, "CNN channels"),
        ("--hidden", int, "CNN hidden units"),
    ):
        parser.add_argument(name, type=kind, default=None, help=help_)
    parser.add_argument("--budgets", type=int, nargs="+", default=None, help="start budgets")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rare", type=int, nargs="+", default=None, help="rare classes")
    parser.add_argument("--rare-keep", type=float, default=0.01)
    parser.add_argument("--rpr-k", type=int, default=10)
    parser.add_argument("--mc-samples", type=int, default=20, help="BALD's dropout passes")
    parser.add_argument("--dropout", type=float, default=0.25, help="BALD's dropout")
    parser.add_argument("--strategies", nargs="+", default=None, choices=sorted(st.STRATEGIES))
    parser.add_argument("--pilot", action="store_true", help="the pilot's candidate list")
    parser.add_argument("--workers", type=int, default=1, help="processes (1 thread each)")
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="DIR",
        help="rank strategies across finished runs (docs/acquisition.md)",
    )
    parser.add_argument("--quick", action="store_true", help="digits, tiny, four strategies")


def settings_from_args(args: argparse.Namespace) -> ALSettings:
    """Resolve ``--quick``, ``--pilot`` and the per-dataset defaults into :class:`ALSettings`."""
    ds = "digits" if args.quick else args.dataset
    base = dict(_DEFAULTS["quick" if args.quick else "npz" if ds.startswith("npz:") else ds])
    if args.pilot:
        base["strategies"] = st.PILOT
    base["pool_size"] = 3000 if ds == "mnist" else 0
    pick: dict[str, Any] = {}
    for key, v in base.items():
        given = getattr(args, key, None)
        pick[key] = tuple(given) if isinstance(given, list) else given if given is not None else v
    return ALSettings(
        dataset=ds,
        data_dir=args.data_dir,
        seed_offset=args.seed_offset or 0,
        batch_size=args.batch_size,
        lr=args.lr,
        rare=tuple(args.rare) if args.rare else None,
        rare_keep=args.rare_keep,
        rpr_k=args.rpr_k,
        mc_samples=args.mc_samples,
        dropout=args.dropout,
        **pick,
    )


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the benchmark; write results.json, report.md, PNGs; print tables last."""
    if args.combine:
        print(combine(args.combine, args.strategies))
        return 0
    cfg = settings_from_args(args)
    out = Path(args.out or f"out/al_{cfg.dataset.replace(':', '_').replace('/', '_')}")
    results = run_benchmark(cfg, out, workers=max(1, args.workers))
    print(write_outputs(results, out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rprselect.benchmarks.active_learning``."""
    parser = argparse.ArgumentParser(prog="rprselect bench active-learning", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
