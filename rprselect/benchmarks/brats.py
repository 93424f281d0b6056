"""``rprselect bench brats``: the paper's BraTS experiment (Section 1.4, Table 2, Figure 4).

For each fold of a k-fold cross-validation a bias-free PocketUNet is trained on random patches
(Adam, relaxed Dice loss, batch 2, best validation Dice kept). Every held-out volume then gets
the Dice of the tensor model under whole-volume sliding-window inference and its RPR at rank
k = 10 under the whole-volume sliding-window operator :math:`A_{sw}[x]`:

.. math:: \\mathrm{RPR}(x; 10) = \\|V_{10} V_{10}^T x\\|_2^2 / \\|x\\|_2^2 \\quad (\\text{Eq. } 10).

Outputs under ``--out``: ``splits.json``, ``models/fold<i>_{3d,2d}.pt`` (state dicts, reloaded
with ``weights_only=True`` by ``--reuse``), ``volumes.csv``, ``slices.csv``, ``results.json``,
``fig4_volumes.png``, ``fig4_slices.png`` and ``report.md``.

Slice level (``--slices``, on by default): few volumes make quantiles meaningless, so a 2-D
PocketUNet is trained on axial patches of the same folds, and every axial slice of a held-out
volume that contains brain is a sample: its RPR is that of the slice's own :math:`A[x_s]` of the
2-D model (zero-padded to a multiple of :math:`2^{depth-1}`), its Dice that of the 2-D model's
prediction on the whole slice. The slice table and correlation use only slices whose ground truth
has tumour (Dice of two empty masks is 0/0); slices without tumour stay in ``slices.csv``.
Both levels also get a per-fold table: each fold has its own model, and RPR values of different
models are not on one scale, so the pooled correlation mixes models and samples.

Modes: the defaults are the paper's (128³ patches, depth 5, 32 filters, 1000 epochs: a GPU job);
``--cpu`` is a preset sized for a few volumes on 2 CPU cores; ``--quick`` runs on synthetic
volumes in about a minute. A CPU run that trains prints :func:`cpu_estimate`, a measured lower bound
of its run time, before it starts.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rprselect.benchmarks.common import (
    Stopwatch,
    machine_description,
    markdown_table,
    out_dir,
    write_json,
)

__all__ = ["add_arguments", "run", "main", "PRESETS", "cpu_estimate"]

#: settings of ``--cpu`` and ``--quick``; explicit command-line values override them
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        spacing=None, patch=128, depth=5, filters=32, epochs=1000, val_every=1, patch2d=128,
        patches2d=2,
        folds=5, k=10, tol=1e-4,
    ),
    "cpu": dict(
        spacing=6.0, patch=16, depth=3, filters=8, epochs=30, val_every=3, patch2d=24,
        patches2d=8,
        folds=5, k=10, tol=1e-4,
    ),
    # integrity only: rank 3 at a loose tolerance keeps the SVDs to a few dozen products
    "quick": dict(
        spacing=None, patch=8, depth=2, filters=4, epochs=2, val_every=1, patch2d=8,
        patches2d=2,
        folds=2, k=3, tol=1e-2,
    ),
}  # fmt: skip
#: the 7 BraTS 2018 cases of the ``shared/`` folder beside a checkout (tests and benchmarks)
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats2018_wt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rprselect bench brats``."""
    a = parser.add_argument
    a("--data-dir", type=Path, default=None, help="folder of BraTS cases (any layout)")
    a("--out", type=Path, default=Path("out/brats"), help="output folder")
    a("--modalities", default=None, help="comma-separated, e.g. flair,t1,t1ce,t2")
    a("--layout", default="auto", help="auto, shared, brats2020, brats2021, brats2023, msd")
    a("--folds", type=int, default=None, help="k of the k-fold cross-validation (paper: 5)")
    a("--epochs", type=int, default=None, help="epochs, each drawing patches from every case")
    a("--patch", type=int, default=None, help="3-D patch edge, divisible by 2**(depth-1)")
    a("--patch2d", type=int, default=None, help="2-D patch edge of the slice model")
    a("--patches2d", type=int, default=None, help="2-D patches per case and epoch")
    a("--depth", type=int, default=None, help="PocketUNet depth (paper: 5)")
    a("--filters", type=int, default=None, help="PocketUNet filters (paper: 32)")
    a("--spacing", type=float, default=None, help="resample to this isotropic mm")
    a("--val-every", type=int, default=None, help="validate every this many epochs")
    a("--k", type=int, default=None, help="singular triplets (paper: 10)")
    a("--tol", type=float, default=None, help="SVD relative tolerance (paper: 1e-4)")
    a("--max-cases", type=int, default=None, help="use only the first N cases")
    a("--no-slices", dest="slices", action="store_false", help="skip the 2-D slice level")
    a("--cpu", action="store_true", help="preset for a few volumes on 2 CPU cores")
    a("--quick", action="store_true", help="synthetic volumes, a couple of epochs")
    a("--reuse", action="store_true", help="load saved models and splits, only analyse")
    a("--device", default="cpu", help="torch device for training and the SVDs, e.g. cuda")
    a("--threads", type=int, default=None, help="torch.set_num_threads")
    a("--seed", type=int, default=0)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    preset = "quick" if args.quick else "cpu" if args.cpu else "paper"
    s = dict(PRESETS[preset], preset=preset)
    keys = ("spacing", "patch", "patch2d", "patches2d", "depth", "filters", "epochs", "val_every")
    for key in (*keys, "folds", "k", "tol"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    m = 2 ** (s["depth"] - 1)
    for key in ("patch", "patch2d"):
        if s[key] % m:
            raise ValueError(
                f"{key} must be divisible by 2**(depth-1) = {m} for depth={s['depth']}, "
                f"got {s[key]}"
            )
    return s


def _load_data(args: argparse.Namespace, s: dict[str, Any], tmp: Path | None) -> Any:
    from rprselect.data.brats import find_cases, load_cases
    from rprselect.data.synthetic import write_synthetic_brats

    mods = tuple(args.modalities.split(",")) if args.modalities else None
    if args.quick:
        assert tmp is not None
        mods = mods or ("flair", "t1")
        write_synthetic_brats(tmp, n_cases=4, shape=(16, 16, 8), modalities=mods, seed=args.seed)
        root = tmp
    else:
        root = args.data_dir or SHARED_DATA
        mods = mods or (("flair", "t1") if root == SHARED_DATA else ("flair", "t1", "t1ce", "t2"))
    found = find_cases(root, mods, args.layout)
    cases = found.cases[: args.max_cases] if args.max_cases else found.cases
    found.cases = cases
    data = load_cases(found, mods, spacing=s["spacing"])
    keep = [i for i, lab in enumerate(data.labels) if lab is not None]
    for i, cid in enumerate(data.case_ids):
        if i not in keep:
            data.skipped.append((cid, "no label file"))
    data.case_ids = [data.case_ids[i] for i in keep]
    data.images = [data.images[i] for i in keep]
    data.labels = [data.labels[i] for i in keep]
    return data, mods


def _model(s: dict[str, Any], n_in: int, dims: int) -> Any:
    from rprselect.models import PocketUNet

    return PocketUNet(n_in, 2, dims=dims, depth=s["depth"], filters=s["filters"])


def _train_or_load(
    s: dict[str, Any], args: argparse.Namespace, data: Any, fold: Any, dims: int, path: Path
) -> tuple[Any, dict[str, Any]]:
    import torch

    from rprselect.benchmarks.brats_train import TrainConfig, train_model

    model = _model(s, data.images[0].shape[0], dims)
    if args.reuse:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(args.device).eval(), {"reused": str(path)}
    idx = {c: i for i, c in enumerate(data.case_ids)}
    cfg = TrainConfig(
        dims=dims,
        depth=s["depth"],
        filters=s["filters"],
        patch=s["patch"] if dims == 3 else s["patch2d"],
        epochs=s["epochs"],
        val_every=s["val_every"],
        patches_per_case=2 if dims == 3 else s["patches2d"],
        seed=args.seed + fold.fold,
    )
    pick = lambda ids, key: [getattr(data, key)[idx[c]] for c in ids]  # noqa: E731
    device = torch.device(args.device)
    res = train_model(
        model.to(device),
        pick(fold.train, "images"),
        pick(fold.train, "labels"),
        pick(fold.val, "images"),
        pick(fold.val, "labels"),
        cfg,
        log=not args.quick,
    )
    model = res.model.eval()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return model, {"best_epoch": res.best_epoch, "best_val_dice": res.best_val_dice}


#: matrix products of one rank-10 volume SVD, as measured on the --cpu run (54-78, docs/brats.md)
PRODUCTS_PER_SVD = 70


def _step_seconds(s: dict[str, Any], n_in: int, dims: int, patch: int) -> tuple[float, int]:
    """Seconds of one training step (batch 2, forward and backward) at ``patch``, measured on
    the smallest patch the network takes and scaled by the number of voxels."""
    import time

    import torch

    small = min(patch, max(16, 2 ** (s["depth"] - 1)))
    model = _model(s, n_in, dims)
    x = torch.rand(2, n_in, *(small,) * dims)
    model(x[:1]).sum().backward()  # warm-up: first-call allocations
    t0 = time.perf_counter()
    model(x).square().mean().backward()
    return (time.perf_counter() - t0) * (patch / small) ** dims, small


def cpu_estimate(
    s: dict[str, Any], n_train: Sequence[int], n_in: int, shapes: Sequence[tuple[int, ...]]
) -> str:
    """A rough lower bound of the run time on this CPU, said before the run starts.

    Training: ``epochs * ceil(patches * n_train / 2)`` steps per fold and model, each timed
    once on a small patch and scaled by the voxel count. Volume SVDs: about
    :data:`PRODUCTS_PER_SVD` window passes per sliding window of each volume. Validation
    and the slice SVDs are left out, so the run takes longer.
    """
    t3, small3 = _step_seconds(s, n_in, 3, s["patch"])
    t2, _ = _step_seconds(s, n_in, 2, s["patch2d"])
    steps3 = sum(s["epochs"] * -(-2 * n // 2) for n in n_train)
    steps2 = sum(s["epochs"] * -(-s["patches2d"] * n // 2) for n in n_train)
    windows = sum(int(np.prod([-(-d // s["patch"]) for d in sh])) for sh in shapes)
    svd = windows * PRODUCTS_PER_SVD * t3 / 2
    total = steps3 * t3 + steps2 * t2 + svd
    text = (
        f"estimated run time on this CPU: at least {_duration(total)} (3-D training "
        f"{_duration(steps3 * t3)}, 2-D training {_duration(steps2 * t2)}, volume SVDs "
        f"{_duration(svd)}; one 3-D step on a {small3}^3 patch, scaled to {s['patch']}^3: "
        f"{t3:.3g} s)"
    )
    if s["preset"] != "cpu":
        text += (
            f". The {s['preset']} preset is a GPU job: pass --device cuda, or --cpu for the "
            "preset sized for a few volumes on 2 CPU cores (docs/brats.md: 28 minutes for 7 "
            "cases); Ctrl-C stops it"
        )
    return text


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; returns the process exit code."""
    import torch

    from rprselect.benchmarks import brats_analysis as an
    from rprselect.benchmarks.brats_train import Fold, kfold_splits

    s = _settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = out_dir(args.out)
    models_dir = out_dir(out / "models")
    sw = Stopwatch()
    with tempfile.TemporaryDirectory() as tmpname:
        with sw("load"):
            data, mods = _load_data(args, s, Path(tmpname) if args.quick else None)
    for cid, reason in data.skipped:
        print(f"skipped case {cid}: {reason}")
    n = len(data.case_ids)
    print(
        f"{n} cases loaded ({s['preset']} preset, modalities {','.join(mods)}), "
        f"shapes {[tuple(im.shape[1:]) for im in data.images]}"
    )
    splits_path = out / "splits.json"
    if args.reuse:
        import json

        folds = [Fold(**f) for f in json.loads(splits_path.read_text())["folds"]]
    else:
        folds = kfold_splits(data.case_ids, s["folds"], seed=args.seed)
        write_json(splits_path, {"folds": [f.__dict__ for f in folds], "seed": args.seed})
    if not args.quick and not args.reuse and torch.device(args.device).type == "cpu":
        shapes = [tuple(im.shape[1:]) for im in data.images]
        print(cpu_estimate(s, [len(f.train) for f in folds], data.images[0].shape[0], shapes))
        sys.stdout.flush()
    idx = {c: i for i, c in enumerate(data.case_ids)}
    vol_rows: list[dict[str, Any]] = []
    slice_rows: list[dict[str, Any]] = []
    training: dict[str, Any] = {}
    for fold in folds:
        print(f"fold {fold.fold}: test {fold.test}, val {fold.val}, train {fold.train}")
        with sw("train 3-D"):
            m3, info = _train_or_load(s, args, data, fold, 3, models_dir / f"fold{fold.fold}_3d.pt")
        training[f"fold{fold.fold}_3d"] = info
        m2 = None
        if args.slices:
            with sw("train 2-D"):
                m2, info = _train_or_load(
                    s, args, data, fold, 2, models_dir / f"fold{fold.fold}_2d.pt"
                )
            training[f"fold{fold.fold}_2d"] = info
        for cid in fold.test:
            image, label = data.images[idx[cid]], data.labels[idx[cid]]
            x = torch.as_tensor(image)
            with sw("RPR volumes"):
                val = an.volume_rpr(m3, x, (s["patch"],) * 3, k=s["k"], tol=s["tol"])
            dice = an.binary_dice(val.prediction, label[0], empty=1.0)
            vol_rows.append(
                dict(case=cid, fold=fold.fold, dice=dice, rpr=val.rpr, converged=val.converged,
                     n_products=val.n_products, svd_seconds=round(val.seconds, 2),
                     tumour_voxels=int(label.sum()), shape="x".join(map(str, image.shape[1:])))
            )  # fmt: skip
            print(f"  {cid}: Dice {dice:.4f} RPR {val.rpr:.4g} ({val.n_products} products, "
                  f"{val.seconds:.0f} s)")  # fmt: skip
            if m2 is not None:
                with sw("RPR slices"):
                    slice_rows += _slice_rows(an, m2, image, label, cid, fold.fold, s, args)
    _write_csv(out / "volumes.csv", vol_rows)
    _write_csv(out / "slices.csv", slice_rows)
    return _report(an, out, s, args, data, vol_rows, slice_rows, training, sw, mods)


def _slice_rows(
    an: Any, model: Any, image: np.ndarray, label: np.ndarray, cid: str, fold: int,
    s: dict[str, Any], args: argparse.Namespace,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per axial slice with brain: RPR of the slice's own A[x_s], Dice of the 2-D model."""
    import torch

    m = 2 ** (s["depth"] - 1)
    X, Y = image.shape[1:3]
    pad = ((0, 0), (0, -X % m), (0, -Y % m))
    zs = [z for z in range(image.shape[3]) if np.any(image[..., z] != 0)]
    if not zs:
        return []
    xs = torch.as_tensor(np.stack([np.pad(image[..., z], pad) for z in zs]))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(zs), 64):  # bounded memory per Lanczos batch
        chunk = xs[start : start + 64]
        values, conv, pred, nprod = an.slice_rpr(model, chunk, k=s["k"], tol=s["tol"])
        for j, z in enumerate(zs[start : start + 64]):
            gt = label[0, :, :, z]
            rows.append(
                dict(case=cid, fold=fold, z=z, dice=an.binary_dice(pred[j, :X, :Y], gt, 1.0),
                     rpr=float(values[j]), converged=bool(conv[j]), tumour_pixels=int(gt.sum()),
                     predicted_pixels=int(pred[j, :X, :Y].sum()))
            )  # fmt: skip
    return rows


def _report(
    an: Any, out: Path, s: dict[str, Any], args: argparse.Namespace, data: Any,
    vol_rows: list[dict[str, Any]], slice_rows: list[dict[str, Any]], training: dict[str, Any],
    sw: Stopwatch, mods: Sequence[str],
) -> int:  # fmt: skip
    v_rpr = [r["rpr"] for r in vol_rows]
    v_dice = [r["dice"] for r in vol_rows]
    vol_table = an.quantile_table(v_rpr, v_dice)
    rho, p = an.spearman(v_rpr, v_dice)
    an.scatter_plot(out / "fig4_volumes.png", v_rpr, v_dice,
                    f"volumes (n={len(v_rpr)}), Spearman {rho:.3f}",
                    [r["fold"] for r in vol_rows])  # fmt: skip
    tum = [r for r in slice_rows if r["tumour_pixels"] > 0]
    results: dict[str, Any] = {
        "settings": s, "modalities": list(mods), "folds": s["folds"], "k": s["k"],
        "tol": s["tol"], "machine": machine_description(args.device),
        "cases": data.case_ids, "skipped": data.skipped, "training": training,
        "seconds": sw.seconds, "volume": {"spearman": rho, "p_value": p,
        "table": [r.__dict__ for r in vol_table], "mean_dice": float(np.mean(v_dice))},
    }  # fmt: skip
    sections = [
        "# BraTS: Dice against RPR (paper Table 2, Figure 4)",
        f"Preset `{s['preset']}`: {len(vol_rows)} volumes, modalities {', '.join(mods)}, "
        f"spacing {s['spacing'] or 'native'} mm, {s['folds']}-fold CV, PocketUNet depth "
        f"{s['depth']} with {s['filters']} filters, patch {s['patch']}, {s['epochs']} epochs, "
        f"RPR at k={s['k']}, tol={s['tol']:g} (Lanczos). Machine: {results['machine']}.",
        "## Volume level (whole-volume sliding-window operator)",
        an.quantile_markdown(vol_table),
        f"Spearman(RPR, Dice) = {rho:.4f} (p = {p:.3g}, n = {len(v_rpr)}).",
    ]
    fold_table, results["volume"]["per_fold"] = an.per_fold_markdown(vol_rows)
    if len({r["fold"] for r in vol_rows}) < len(vol_rows):
        sections += ["Within each fold's model:", fold_table]
    if tum:
        s_rpr, s_dice = [r["rpr"] for r in tum], [r["dice"] for r in tum]
        sl_table = an.quantile_table(s_rpr, s_dice)
        srho, sp = an.spearman(s_rpr, s_dice)
        an.scatter_plot(out / "fig4_slices.png", s_rpr, s_dice,
                        f"axial slices with tumour (n={len(tum)}), Spearman {srho:.3f}",
                        [r["fold"] for r in tum])  # fmt: skip
        results["slice"] = {"spearman": srho, "p_value": sp, "n": len(tum),
                            "n_brain_slices": len(slice_rows),
                            "table": [r.__dict__ for r in sl_table]}  # fmt: skip
        sections += [
            "## Slice level (2-D PocketUNet, RPR of each slice's own A[x], slices with tumour)",
            an.quantile_markdown(sl_table),
            f"Spearman(RPR, Dice) = {srho:.4f} (p = {sp:.3g}, n = {len(tum)} slices with "
            f"tumour of {len(slice_rows)} with brain).",
        ]
        fold_table, results["slice"]["per_fold"] = an.per_fold_markdown(tum)
        sections += ["Within each fold's model (RPR scales differ between models):", fold_table]
    timing = markdown_table(["stage", "seconds"], [[k, round(v, 1)] for k, v in sw.seconds.items()])
    sections += ["## Time", timing]
    write_json(out / "results.json", results)
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    print("\n\n".join(sections[2:]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m rprselect.benchmarks.brats``."""
    parser = argparse.ArgumentParser(prog="rprselect bench brats", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
