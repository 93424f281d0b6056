"""Training for the BraTS benchmark: k-fold splits, random patches, the paper's relaxed Dice loss.

Paper Section 1.4: batch size 2, Adam with learning rate :math:`3 \\cdot 10^{-4}`, the
L2-relaxed (squared-denominator) Dice loss

.. math:: \\mathcal{L} = 1 - \\frac{2 \\sum_i p_i g_i}{\\sum_i p_i^2 + \\sum_i g_i^2},

random patches, and the best model on a validation case kept (MONAI ``DiceLoss``,
``DiceMetric``, ``RandCropByPosNegLabeld`` and ``sliding_window_inference``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Fold", "TrainConfig", "TrainResult", "kfold_splits", "predict", "train_model"]


@dataclass(frozen=True)
class Fold:
    """Case ids of one fold: held-out test cases, training cases and the validation case."""

    fold: int
    test: list[str]
    train: list[str]
    val: list[str]


def kfold_splits(case_ids: Sequence[str], folds: int, seed: int = 0) -> list[Fold]:
    """Shuffle the cases once and cut them into ``folds`` test sets of near-equal size.

    The first case (after shuffling) of each fold's remaining cases is its validation case; the
    others are its training cases. Every case is tested exactly once.

    Args:
        case_ids: the cases.
        folds: number of folds, ``2 <= folds <= len(case_ids) - 1`` (each fold needs a
            validation case and at least one training case: ``len(case_ids) - ceil(n/folds)
            >= 2``).
        seed: seed of the shuffle.

    Raises:
        ValueError: if there are too few cases for ``folds``.
    """
    ids = list(case_ids)
    n = len(ids)
    if folds < 2 or n - -(-n // folds) < 2:
        raise ValueError(
            f"folds must be >= 2 and leave >= 2 cases (train + validation) outside each test "
            f"fold; got folds={folds} with {n} cases"
        )
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    result = []
    for f, part in enumerate(parts):
        test = [ids[i] for i in part]
        rest = [ids[i] for i in order if ids[i] not in test]
        result.append(Fold(f, test, rest[1:], rest[:1]))
    return result


@dataclass(frozen=True)
class TrainConfig:
    """Training knobs; defaults are the paper's where it gives them (Section 1.4)."""

    dims: int = 3
    depth: int = 5
    filters: int = 32
    patch: int = 128
    epochs: int = 1000
    lr: float = 3e-4
    batch_size: int = 2
    patches_per_case: int = 2
    val_every: int = 1
    overlap: float = 0.25
    seed: int = 0


@dataclass
class TrainResult:
    """The best model (on validation Dice) and its training history."""

    model: nn.Module
    best_epoch: int
    best_val_dice: float
    history: list[dict[str, float]] = field(default_factory=list)


def _augment_patches(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    patch: int,
    n: int,
    seed: int,
    dims: int,
) -> list[tuple[Tensor, Tensor]]:
    """``n`` random patches of each case (MONAI ``RandCropByPosNegLabeld``), half centred on
    tumour. With ``dims=2`` the patches are ``patch x patch`` pieces of axial slices."""
    import monai.transforms as mt

    roi = (patch,) * dims + (1,) * (images[0].ndim - 1 - dims)
    transform = mt.Compose(
        [
            mt.SpatialPadd(["image", "label"], spatial_size=roi),
            mt.RandCropByPosNegLabeld(
                ["image", "label"], "label", roi, pos=1, neg=1, num_samples=n, allow_smaller=False
            ),
        ]
    )
    transform.set_random_state(seed=seed)
    out: list[tuple[Tensor, Tensor]] = []
    for img, lab in zip(images, labels, strict=True):
        for s in transform({"image": img, "label": lab}):
            img_p, lab_p = (torch.as_tensor(np.asarray(s[key])) for key in ("image", "label"))
            if img_p.dim() > dims + 1:  # axial 2-D patch: drop the trailing axis of size 1
                img_p, lab_p = img_p[..., 0], lab_p[..., 0]
            out.append((img_p, lab_p))
    return out


def predict(
    model: nn.Module, image: Tensor, patch: int, overlap: float = 0.25, dims: int = 3
) -> Tensor:
    """Stitched logits of one volume ``(C, X, Y, Z)`` by MONAI ``sliding_window_inference``;
    with ``dims=2`` slice by slice (the axial slices form the batch)."""
    from monai.inferers import sliding_window_inference

    device = next(model.parameters()).device
    batch = (image[None] if dims == 3 else image.permute(3, 0, 1, 2)).to(device)
    model.eval()
    with torch.no_grad():
        out = torch.as_tensor(
            sliding_window_inference(
                batch, (patch,) * dims, 4, model, overlap=overlap, mode="constant"
            )
        )
    return (out[0] if dims == 3 else out.permute(1, 2, 3, 0)).cpu()


def _val_dice(
    model: nn.Module, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], cfg: TrainConfig
) -> float:
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
    for img, lab in zip(images, labels, strict=True):
        logits = predict(model, torch.as_tensor(img), cfg.patch, cfg.overlap, cfg.dims)
        pred = nn.functional.one_hot(logits.argmax(0), 2).movedim(-1, 0)[None]
        gt = nn.functional.one_hot(torch.as_tensor(lab[0]).long(), 2).movedim(-1, 0)[None]
        metric(pred, gt)
    agg = metric.aggregate()  # a tensor with reduction='mean'
    return float(agg[0] if isinstance(agg, tuple) else agg)


def train_model(
    model: nn.Module,
    train_images: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    cfg: TrainConfig,
    log: bool = False,
) -> TrainResult:
    """Train ``model`` on random patches and keep the weights of the best validation Dice.

    One epoch draws ``patches_per_case`` patches (half tumour-centred, half random) from every
    case and takes one Adam step per case.

    Args:
        model: network with ``cfg.dims`` spatial dims; trained in place, best weights loaded.
        train_images: arrays ``(C, *spatial)``.
        train_labels: binary arrays ``(1, *spatial)``.
        val_images: validation arrays, scored with sliding-window inference.
        val_labels: their labels.
        cfg: the knobs.
        log: print a line per validation.

    Returns:
        :class:`TrainResult`.
    """
    from monai.losses import DiceLoss

    if not train_images:
        raise ValueError("train_images must hold at least one case, got none")
    loss_fn = DiceLoss(squared_pred=True, softmax=True, to_onehot_y=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    best_state, best, best_epoch = copy.deepcopy(model.state_dict()), -1.0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        patches = _augment_patches(
            train_images,
            train_labels,
            cfg.patch,
            cfg.patches_per_case,
            cfg.seed * 100003 + epoch,
            cfg.dims,
        )
        order = torch.randperm(len(patches), generator=gen).tolist()
        losses = []
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = torch.stack([patches[j][0] for j in idx]).to(device)
            y = torch.stack([patches[j][1] for j in idx]).to(device)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        record = {"epoch": float(epoch), "loss": float(np.mean(losses))}
        if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
            dice = _val_dice(model, val_images, val_labels, cfg)
            record["val_dice"] = dice
            if dice > best:
                best, best_epoch = dice, epoch
                best_state = copy.deepcopy(model.state_dict())
            if log:
                print(f"  epoch {epoch:4d} loss {record['loss']:.4f} val Dice {dice:.4f}")
        history.append(record)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best, history)
