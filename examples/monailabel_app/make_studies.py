"""Write a small studies folder of single-channel NIfTI volumes to try the app on.

With ``--brats DIR`` (a folder of BraTS cases, each with ``FLAIR.nii.gz``, e.g. the shared
``brats2018_wt``), each FLAIR volume is cropped to the brain's bounding box and area-averaged
down to ``--size``; otherwise ``--n`` synthetic volumes (noise, blobs, a bright box) are written.

    python examples/monailabel_app/make_studies.py --out studies --brats ../shared/data/brats2018_wt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def brats(folder: Path, out: Path, size: tuple[int, int, int]) -> list[str]:
    written = []
    for case in sorted(p for p in folder.iterdir() if (p / "FLAIR.nii.gz").exists()):
        a = np.asarray(nib.load(case / "FLAIR.nii.gz").dataobj, dtype=np.float32)
        box = a[tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(a))]
        t = torch.from_numpy(np.ascontiguousarray(box))[None, None]
        small = torch.nn.functional.interpolate(t, size=size, mode="area")[0, 0].numpy()
        nib.save(nib.Nifti1Image(small, np.eye(4)), out / f"{case.name}.nii.gz")
        written.append(case.name)
    return written


def synthetic(n: int, out: Path, size: tuple[int, int, int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)
    written = []
    for i in range(n):
        a = 0.2 * rng.normal(size=size)
        if i % 3 == 1:
            c = rng.uniform(0, 1, 3) * np.array(size)
            a += np.exp(-((grid - c) ** 2).sum(-1) / (2 * (2.0 + i) ** 2))
        elif i % 3 == 2:
            lo = rng.integers(0, np.array(size) // 2)
            a[lo[0] : lo[0] + 6, lo[1] : lo[1] + 6, lo[2] : lo[2] + 4] += 3.0
        nib.save(nib.Nifti1Image(a.astype(np.float32), np.eye(4)), out / f"case{i:03d}.nii.gz")
        written.append(f"case{i:03d}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="studies folder to write")
    parser.add_argument("--brats", help="folder of BraTS cases (FLAIR.nii.gz each)")
    parser.add_argument("--n", type=int, default=6, help="synthetic volumes without --brats")
    parser.add_argument("--size", type=int, nargs=3, default=[32, 32, 24], help="voxels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = (args.size[0], args.size[1], args.size[2])
    ids = (
        brats(Path(args.brats), out, size)
        if args.brats
        else synthetic(args.n, out, size, args.seed)
    )
    print(f"wrote {len(ids)} volumes of {size[0]}x{size[1]}x{size[2]} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
