"""Benchmarks behind ``rprselect bench NAME``: each module has ``add_arguments`` and ``run``.

A benchmark writes JSON, a Markdown table and PNG plots under ``--out`` and prints its table last.
Modules are imported only when their subcommand runs, so heavy optional imports stay lazy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["BENCHMARKS", "load"]

#: subcommand -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "mnist-imbalance": (
        "mnist_imbalance",
        "the paper's MNIST class-imbalance experiment (Fig. 1-3)",
    ),
    "brats": ("brats", "the paper's BraTS segmentation experiment (Table 2, Fig. 4)"),
    "solvers": ("solvers", "solver cost against the paper's SLEPc method, and throughput"),
    "active-learning": ("active_learning", "learning curves of RPR against standard acquisitions"),
    "scaling": ("scaling", "pool-scoring scaling from 1 to N processes (torch.distributed)"),
    "failure-prediction": (
        "failure_prediction",
        "how well each acquisition score predicts the model's errors (AUROC, Dice)",
    ),
}


def load(name: str) -> ModuleType:
    """Import the module of benchmark ``name``."""
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{BENCHMARKS[name][0]}")
