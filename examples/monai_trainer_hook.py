"""Train a small bias-free UNet with MONAI and let rprselect propose volumes to annotate.

A MONAI ``SupervisedTrainer`` trains ``PocketUNet`` on 16³ patches of synthetic volumes (bright
blobs to segment). ``RPRHandler`` fires at the end of every epoch: it scores an unlabelled pool
of larger volumes through sliding windows, exactly as MONAI's inferer stitches them, and writes
the lowest-RPR volumes to ``OUT/rpr_epoch{N}.json``.

    python examples/monai_trainer_hook.py --epochs 2 --out out/monai_hook

Needs ``pip install 'rprselect[monai]'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from monai.data import Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from rprselect.integrations import RPRHandler
from rprselect.models import PocketUNet


def blobs(n: int, size: tuple[int, int, int], seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` volumes ``(1, *size)``: noise plus one bright ball, its mask the label."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*(torch.arange(s) for s in size), indexing="ij"))
    cases = []
    for _ in range(n):
        centre = torch.stack([torch.randint(3, s - 3, (1,), generator=g) for s in size])
        radius = 2 + 3 * torch.rand(1, generator=g)
        label = ((grid - centre.reshape(3, 1, 1, 1)) ** 2).sum(0) <= radius**2
        image = 0.2 * torch.rand(size, generator=g) + label.float()
        cases.append({"image": image[None], "label": label[None].long()})
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=1, help="score the pool every N epochs")
    parser.add_argument("--train", type=int, default=8, help="training volumes")
    parser.add_argument("--pool", type=int, default=4, help="unlabelled volumes to rank")
    parser.add_argument("--propose", type=int, default=2, help="volumes to propose per epoch")
    parser.add_argument("--k", type=int, default=4, help="singular triplets per volume")
    parser.add_argument("--out", default="out/monai_hook")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train = DataLoader(blobs(args.train, (16, 16, 16), args.seed), batch_size=4, shuffle=True)
    pool = Dataset(blobs(args.pool, (20, 16, 16), args.seed + 1))  # dicts; labels unused

    net = PocketUNet(in_channels=1, out_channels=2, dims=3, depth=2, filters=4)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=args.epochs,
        train_data_loader=train,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    RPRHandler(
        pool,
        every=args.every,
        n_propose=args.propose,
        k=args.k,
        roi_size=(16, 16, 16),
        overlap=0.25,
        output_dir=args.out,
    ).attach(trainer)
    trainer.run()

    for path in sorted(Path(args.out).glob("rpr_epoch*.json")):
        report = json.loads(path.read_text())
        picks = ", ".join(f"{p['id']} (RPR {p['rpr']:.4f})" for p in report["proposals"])
        print(f"epoch {report['epoch']}: propose {picks}")
    print(f"last proposals: {[p['index'] for p in trainer.state.rpr_proposals]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
