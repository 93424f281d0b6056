"""Train the 3-D PocketUNet of ``rprselect bench solvers``' trained cases, once, and save it.

The BraTS CPU preset (``rprselect bench brats --cpu``: Adam 3e-4, batch 2, the squared Dice
loss, random patches half centred on tumour, the best validation Dice kept) on the shared
BraTS 2018 cases (FLAIR and T1), resampled to 2 mm so that 64³ crops fit, with the benchmark's
network ``PocketUNet(2, 2, dims=3, depth=4, filters=8)``. The last case is the validation
case. Writes the state dict to ``--out`` and a JSON record beside it; ``rprselect bench solvers
--weights PATH`` then needs no retraining.

Run: ``.venv/bin/python scripts/train_solver_unet.py --out out/solver_unet.pt`` (minutes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/solver_unet.pt"))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--filters", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rprselect.benchmarks.bench_data import SHARED_BRATS
    from rprselect.benchmarks.brats_train import TrainConfig, train_model
    from rprselect.data.brats import find_cases, load_cases
    from rprselect.models import PocketUNet

    mods = ("flair", "t1")
    data = load_cases(find_cases(SHARED_BRATS, mods), mods, spacing=args.spacing)
    images = [np.asarray(i, dtype=np.float32) for i in data.images]
    labels = [np.asarray(lab, dtype=np.float32) for lab in data.labels]
    torch.manual_seed(args.seed)
    model = PocketUNet(len(mods), 2, dims=3, depth=args.depth, filters=args.filters)
    cfg = TrainConfig(
        dims=3,
        depth=args.depth,
        filters=args.filters,
        patch=args.patch,
        epochs=args.epochs,
        val_every=3,
        patches_per_case=2,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    res = train_model(model, images[:-1], labels[:-1], images[-1:], labels[-1:], cfg, log=True)
    seconds = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in res.model.state_dict().items()}, args.out)
    record = {
        "cases": data.case_ids,
        "validation_case": data.case_ids[-1],
        "modalities": list(mods),
        "spacing_mm": args.spacing,
        "model": f"PocketUNet({len(mods)}, 2, dims=3, depth={args.depth}, filters={args.filters})",
        "epochs": args.epochs,
        "patch": args.patch,
        "best_epoch": res.best_epoch,
        "best_val_dice": res.best_val_dice,
        "seconds": seconds,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
