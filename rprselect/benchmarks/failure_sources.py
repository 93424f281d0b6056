"""Data and models of the failure-prediction benchmark: one :class:`Unit` per model to evaluate.

Classification (``digits``, ``mnist``, ``npz:PATH``) gives one unit: a trained classifier, its
test set and a labelled reference set (held out of training) on which the scores that need
labelled statistics (class-conditional RPR, ViM's scale) are calibrated. Segmentation gives one
unit per model: ``pngseg:DIR`` trains one 2-D :class:`~rprselect.models.PocketUNet`; ``brats``
trains one per fold of the BraTS benchmark's cross-validation (2-D on axial slices, 3-D on whole
volumes), reusing :mod:`rprselect.benchmarks.brats_train`.

Trained weights are saved under ``OUT/models`` and reloaded (``weights_only=True``) on a rerun.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rprselect.demo import fit_adam
from rprselect.layers import SumPool
from rprselect.models import MNISTNet, PocketUNet

__all__ = ["Unit", "BiasFreeClassifier", "classification_unit", "segmentation_units", "pad_to"]


@dataclass
class Unit:
    """A model and the samples it is judged on.

    Attributes:
        name: ``"model"``, or ``"fold<i>_2d"`` / ``"fold<i>_3d"``.
        kind: ``"classification"`` or ``"segmentation"``.
        model: the trained network (eval mode, float32).
        x: test samples ``(N, C, *spatial)``, or a list of volumes of different shapes.
        target: class labels ``(N,)``, or one ground-truth mask per sample (numpy, unpadded).
        ids: one id per sample.
        ref_x, ref_y: the labelled reference set (classification only).
        roi_size: sliding-window size for whole volumes, else ``None``.
        crop: the unpadded spatial size of each sample (segmentation), for the Dice.
        info: how the model was made (JSON-able).
    """

    name: str
    kind: str
    model: nn.Module
    x: Any
    target: Any
    ids: list[str]
    ref_x: Tensor | None = None
    ref_y: Tensor | None = None
    roi_size: tuple[int, ...] | None = None
    crop: list[tuple[int, ...]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class BiasFreeClassifier(nn.Module):
    """A small bias-free CNN for any ``(C, H, W)`` input and any number of classes (``npz``).

    Conv(C→16, 3x3) → ReLU → SumPool → Conv(16→32, 3x3) → ReLU → SumPool → Linear(→128) → ReLU
    → Linear(→classes), no biases, so the logits are :math:`A[x]\\,x`. H and W must be multiples
    of 4 (the benchmark zero-pads).
    """

    def __init__(self, in_channels: int, num_classes: int, height: int, width: int) -> None:
        super().__init__()
        if height % 4 or width % 4:
            raise ValueError(f"height and width must be multiples of 4, got {height}x{width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.ReLU(),
            SumPool(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.ReLU(),
            SumPool(2),
        )
        self.fc1 = nn.Linear(32 * (height // 4) * (width // 4), 128, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(torch.flatten(self.features(x), 1))))


def pad_to(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the last two axes of ``x`` at the end up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    return nn.functional.pad(x, (0, -w % multiple, 0, -h % multiple))


def _split(n: int, fractions: tuple[float, float], seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Random (train, val, test) positions with the given val and test fractions."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = round(fractions[0] * n), round(fractions[1] * n)
    return perm[n_val + n_test :], perm[:n_val], perm[n_val : n_val + n_test]


def _thin(y: Tensor, rare: tuple[int, ...], keep: float, seed: int) -> Tensor:
    from rprselect.data import imbalance_indices

    if not rare:
        return torch.arange(len(y))
    return imbalance_indices(y, rare=rare, keep_fraction=keep, seed=seed)


def _load_or_train(
    model: nn.Module, path: Path, weights: Path | None, train: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``weights`` (or the model this benchmark saved at ``path``), else train and save.

    The training record (``train_seconds``, losses, ...) is kept beside the weights in
    ``path.with_suffix(".json")``, so a resumed run still reports it.
    """
    import json
    import time

    record = path.with_suffix(".json")
    if weights is not None or path.is_file():
        src = weights if weights is not None else path
        state = torch.load(src, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model.load_state_dict(state)
        info = json.loads(record.read_text()) if weights is None and record.is_file() else {}
        return model.eval(), {**info, "loaded": str(src)}
    t0 = time.perf_counter()
    model, info = train(model)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    record.write_text(json.dumps(info))
    return model.eval(), {**info, "saved": str(path)}


def classification_unit(args: argparse.Namespace, s: dict[str, Any], out: Path) -> Unit:
    """The one classification unit of ``--data digits|mnist|npz:PATH``."""
    torch.manual_seed(args.seed)
    rare, keep = tuple(s["rare"]), float(s["rare_keep"])
    if args.data in ("digits", "mnist"):
        if args.data == "digits":
            from rprselect.data import load_digits_tensors

            full = load_digits_tensors()
            tr, va, te = _split(len(full.labels), (0.1, 0.4), args.seed)
            X, Y = full.images, full.labels
            Xtr, Ytr, Xte, Yte = X[tr], Y[tr], X[te], Y[te]
            Xva, Yva = X[va], Y[va]
        else:
            from rprselect.data import load_mnist
            from rprselect.data.mnist import default_mnist_dir

            root = args.data_dir or default_mnist_dir()
            full_tr, test = load_mnist(root, "train"), load_mnist(root, "test")
            tr, va, _ = _split(len(full_tr.labels), (5000 / len(full_tr.labels), 0.0), args.seed)
            Xtr, Ytr = full_tr.images[tr], full_tr.labels[tr]
            Xva, Yva = full_tr.images[va], full_tr.labels[va]
            Xte, Yte = test.images, test.labels
        kt, kv = _thin(Ytr, rare, keep, args.seed), _thin(Yva, rare, keep, args.seed + 1)
        Xtr, Ytr, Xva, Yva = Xtr[kt], Ytr[kt], Xva[kv], Yva[kv]
        model: nn.Module = MNISTNet(in_size=Xtr.shape[-1])
        num_classes = 10
    else:
        from rprselect.data.generic import load_npz

        data = load_npz(args.data.split(":", 1)[1])
        Xtr, Ytr, Xva, Yva = (
            pad_to(data.train_x, 4),
            data.train_y,
            pad_to(data.val_x, 4),
            data.val_y,
        )
        Xte, Yte = pad_to(data.test_x, 4), data.test_y
        num_classes = data.num_classes
        model = BiasFreeClassifier(Xtr.shape[1], num_classes, *Xtr.shape[-2:])
    if s["test_subset"] and s["test_subset"] < len(Yte):
        pick = torch.randperm(len(Yte), generator=torch.Generator().manual_seed(args.seed + 2))
        pick = torch.sort(pick[: s["test_subset"]]).values
        Xte, Yte = Xte[pick], Yte[pick]
    if s["ref_subset"] and s["ref_subset"] < len(Yva):
        Xva, Yva = Xva[: s["ref_subset"]], Yva[: s["ref_subset"]]

    def train(m: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        if args.data == "mnist":
            from rprselect.benchmarks.mnist_imbalance import train_model
            from rprselect.data import ImageLabels

            m, log = train_model(
                "failure", ImageLabels(Xtr, Ytr), epochs=s["epochs"], seed=args.seed
            )
            return m, {"recipe": "SGD lr 3e-3, batch 32 (paper)", "loss": log.loss}
        return fit_adam(m, Xtr, Ytr, s["epochs"], args.seed), {"recipe": "Adam lr 1e-3, batch 32"}

    model, info = _load_or_train(model, out / "models" / "model.pt", args.weights, train)
    counts = torch.bincount(Ytr, minlength=num_classes).tolist()
    info.update(train_counts=counts, n_ref=len(Yva), n_test=len(Yte), num_classes=num_classes)
    ids = [str(i) for i in range(len(Yte))]
    return Unit("model", "classification", model, Xte, Yte, ids, Xva, Yva, info=info)


def _soft_dice_ce(logits: Tensor, mask: Tensor) -> Tensor:
    prob = logits.softmax(1)[:, 1]
    m = mask.float()
    dice = 2 * (prob * m).sum() / (prob.pow(2).sum() + m.pow(2).sum()).clamp_min(1e-6)
    return 1 - dice + nn.functional.cross_entropy(logits, mask)


def _pngseg_units(args: argparse.Namespace, s: dict[str, Any], out: Path) -> list[Unit]:
    from rprselect.data.generic import load_pngseg

    data = load_pngseg(args.data.split(":", 1)[1], args.downsample, args.tile, args.invert_label)
    sources = sorted(set(data.sources))
    rng = np.random.default_rng(args.seed)
    if len(sources) >= 2:
        order = [sources[i] for i in rng.permutation(len(sources))]
        test_src = set(order[: max(1, round(0.4 * len(order)))])
        is_test = np.array([src in test_src for src in data.sources])
    else:  # one image: split its tiles
        is_test = rng.random(len(data.ids)) < 0.4
    if is_test.all() or not is_test.any():
        raise ValueError(f"pngseg needs samples for training and testing, got {len(data.ids)}")
    m = 2 ** (s["depth"] - 1)
    X = pad_to(data.images, m)
    Y = pad_to(data.masks, m)
    tr, te = torch.from_numpy(np.flatnonzero(~is_test)), torch.from_numpy(np.flatnonzero(is_test))
    model: nn.Module = PocketUNet(X.shape[1], 2, dims=2, depth=s["depth"], filters=s["filters"])

    def train(net: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
        gen = torch.Generator().manual_seed(args.seed)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        for _ in range(s["epochs"]):
            for batch in tr[torch.randperm(len(tr), generator=gen)].split(8):
                opt.zero_grad()
                _soft_dice_ce(net(X[batch]), Y[batch]).backward()
                opt.step()
        return net.eval(), {"recipe": "Adam lr 1e-3, batch 8, soft Dice + CE"}

    model, info = _load_or_train(model, out / "models" / "pngseg_2d.pt", args.weights, train)
    info.update(
        n_train=len(tr), n_test=len(te), sources_test=int(len(set(np.array(data.sources)[is_test])))
    )
    h, w = data.masks.shape[-2:]
    return [
        Unit(
            "model",
            "segmentation",
            model,
            X[te],
            [data.masks[i].numpy() for i in te.tolist()],
            [data.ids[i] for i in te.tolist()],
            crop=[(h, w)] * len(te),
            info=info,
        )
    ]


def _brats_units(args: argparse.Namespace, s: dict[str, Any], out: Path, tmp: Path) -> list[Unit]:
    import json

    from rprselect.benchmarks.brats import SHARED_DATA
    from rprselect.benchmarks.brats_train import Fold, TrainConfig, kfold_splits, train_model
    from rprselect.data.brats import find_cases, load_cases
    from rprselect.data.synthetic import write_synthetic_brats

    mods: tuple[str, ...] = ("flair", "t1")
    if args.quick:
        write_synthetic_brats(tmp, n_cases=4, shape=(16, 16, 8), modalities=mods, seed=args.seed)
        root = tmp
    else:
        root = args.data_dir or SHARED_DATA
    found = find_cases(root, mods, "auto")
    data = load_cases(found, mods, spacing=s["spacing"])
    keep = [i for i, lab in enumerate(data.labels) if lab is not None]
    ids = [data.case_ids[i] for i in keep]
    images = {data.case_ids[i]: data.images[i] for i in keep}
    labels = {data.case_ids[i]: np.asarray(data.labels[i]) for i in keep}
    wdir = args.weights  # a folder written by `rprselect bench brats`: splits.json, models/
    if wdir is not None:
        folds = [Fold(**f) for f in json.loads((wdir / "splits.json").read_text())["folds"]]
    else:
        folds = kfold_splits(ids, s["folds"], seed=args.seed)
    units: list[Unit] = []
    m = 2 ** (s["depth"] - 1)
    for fold in folds:
        for dims in (2, 3) if args.level == "both" else ((2,) if args.level == "slices" else (3,)):
            name = f"fold{fold.fold}_{dims}d"
            cfg = TrainConfig(
                dims=dims, depth=s["depth"], filters=s["filters"],
                patch=s["patch"] if dims == 3 else s["patch2d"], epochs=s["epochs"],
                val_every=s["val_every"], patches_per_case=2 if dims == 3 else s["patches2d"],
                seed=args.seed + fold.fold,
            )  # fmt: skip

            def train(net: nn.Module, fold: Fold = fold, cfg: TrainConfig = cfg) -> Any:
                res = train_model(
                    net,
                    [images[c] for c in fold.train],
                    [labels[c] for c in fold.train],
                    [images[c] for c in fold.val],
                    [labels[c] for c in fold.val],
                    cfg,
                    log=not args.quick,
                )
                return res.model, {"best_epoch": res.best_epoch, "best_val_dice": res.best_val_dice}

            net: nn.Module = PocketUNet(
                len(mods), 2, dims=dims, depth=s["depth"], filters=s["filters"]
            )
            given = wdir / "models" / f"{name}.pt" if wdir is not None else None
            net, info = _load_or_train(net, out / "models" / f"{name}.pt", given, train)
            info.update(test=fold.test, train=fold.train, val=fold.val)
            if dims == 3:
                vols = [torch.as_tensor(images[c]) for c in fold.test]
                masks = [labels[c][0] for c in fold.test]
                crops = [tuple(v.shape[1:]) for v in vols]
                units.append(
                    Unit(name, "segmentation", net, vols, masks, list(fold.test),
                         roi_size=(s["patch"],) * 3, crop=crops, info=info)
                )  # fmt: skip
                continue
            xs, ms, sid, crops = [], [], [], []
            for c in fold.test:
                img, lab = images[c], labels[c]
                for z in range(img.shape[3]):
                    if np.any(img[..., z] != 0):
                        xs.append(pad_to(torch.as_tensor(img[..., z]), m))
                        ms.append(lab[0, :, :, z])
                        sid.append(f"{c}:z{z}")
                        crops.append(tuple(img.shape[1:3]))
            if xs:
                units.append(
                    Unit(
                        name, "segmentation", net, _stack_padded(xs), ms, sid, crop=crops, info=info
                    )
                )
    return units


def _stack_padded(xs: list[Tensor]) -> Tensor:
    """Stack slices of slightly different sizes, zero-padded at the end to the largest."""
    h = max(x.shape[-2] for x in xs)
    w = max(x.shape[-1] for x in xs)
    return torch.stack([nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in xs])


def segmentation_units(
    args: argparse.Namespace, s: dict[str, Any], out: Path, tmp: Path
) -> list[Unit]:
    """The units of ``--data brats`` (one per fold and level) or ``--data pngseg:DIR``."""
    torch.manual_seed(args.seed)
    if args.data == "brats":
        return _brats_units(args, s, out, tmp)
    return _pngseg_units(args, s, out)
