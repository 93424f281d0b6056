"""The samples of ``rprselect bench solvers``: synthetic brains, MNIST, crops of the shared BraTS
cases, and the PocketUNet (random or trained) that goes with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "SHARED_BRATS",
    "brain_volumes",
    "brats_cases",
    "brats_crops",
    "mnist_images",
    "unet_and_volumes",
]


def brain_volumes(n: int, size: int, channels: int = 4, seed: int = 0) -> Tensor:
    """``(n, channels, size, size, size)`` synthetic skull-stripped brain MRIs, float32.

    Each volume is a phantom of :mod:`rprselect.data.synthetic` (an ellipsoid brain with one or
    two tumour blobs, background exactly 0), one modality per channel, scaled to unit standard
    deviation over the brain.
    """
    from rprselect.data.synthetic import _CONTRAST, _phantom

    mods = list(_CONTRAST)[:channels]
    if len(mods) < channels:
        raise ValueError(f"channels must be at most {len(_CONTRAST)}, got {channels}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, channels, size, size, size), dtype=np.float32)
    for i in range(n):
        volumes, _ = _phantom((size, size, size), mods, rng)
        for c, mod in enumerate(mods):
            v = volumes[mod]
            out[i, c] = v / max(float(v[v > 0].std()), 1e-6)
    return torch.from_numpy(out)


#: the BraTS 2018 cases beside a checkout (``../shared/data/brats2018_wt``)
SHARED_BRATS = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats2018_wt"


def brats_cases(spacing: float = 2.0, data_dir: str | Path | None = None) -> list[np.ndarray]:
    """The shared BraTS cases (FLAIR and T1, normalised, resampled to ``spacing`` mm), as
    ``(2, X, Y, Z)`` float32 arrays; cached on disk (``$TMPDIR``) after the first load.

    Raises:
        FileNotFoundError: when the cases are not there.
    """
    import tempfile

    root = Path(data_dir) if data_dir else SHARED_BRATS
    cache = Path(tempfile.gettempdir()) / f"rprselect_brats_{root.name}_{spacing:g}mm.npz"
    if cache.exists():
        with np.load(cache) as z:
            return [z[key] for key in sorted(z.files)]
    if not root.exists():
        raise FileNotFoundError(f"BraTS cases not found at {root}")
    from rprselect.data.brats import find_cases, load_cases

    data = load_cases(find_cases(root, ("flair", "t1")), ("flair", "t1"), spacing=spacing)
    images = [np.asarray(img, dtype=np.float32) for img in data.images]
    np.savez(cache, **{f"case{i:03d}": img for i, img in enumerate(images)})  # type: ignore[arg-type]
    return images


def brats_crops(n: int, size: int, seed: int = 0, spacing: float = 2.0) -> Tensor:
    """``(n, 2, size, size, size)`` crops of the shared BraTS cases, centred in the brain.

    Case ``i % n_cases`` gives crop ``i``; its centre is a random brain voxel (seeded) far
    enough from the border for the crop to fit.
    """
    images = brats_cases(spacing)
    rng = np.random.default_rng(seed)
    out = np.zeros((n, images[0].shape[0], size, size, size), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        if min(img.shape[1:]) < size:
            raise ValueError(
                f"size must fit the cases at {spacing} mm ({img.shape[1:]}), got {size}"
            )
        brain = np.argwhere(np.abs(img).sum(0) > 0)
        lo, hi = np.array([size // 2] * 3), np.array(img.shape[1:]) - (size - size // 2)
        centre = np.clip(brain[rng.integers(len(brain))], lo, hi)
        a = centre - size // 2
        out[i] = img[:, a[0] : a[0] + size, a[1] : a[1] + size, a[2] : a[2] + size]
    return torch.from_numpy(out)


def unet_and_volumes(
    n: int, size: int, depth: int, filters: int, weights: str | None, seed: int
) -> tuple[nn.Module, Tensor]:
    """A PocketUNet and ``n`` volumes of edge ``size``: random weights on synthetic 4-channel
    brains, or the trained ``weights`` (its input channels read from the state dict) on crops
    of the shared BraTS cases."""
    from rprselect.models import PocketUNet

    torch.manual_seed(seed)
    if not weights:
        unet = PocketUNet(4, 2, dims=3, depth=depth, filters=filters)
        return unet.eval(), brain_volumes(n, size, seed=seed)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    first = next(v for k, v in state.items() if k.endswith("weight"))
    unet = PocketUNet(int(first.shape[1]), 2, dims=3, depth=depth, filters=filters)
    unet.load_state_dict(state)
    return unet.eval(), brats_crops(n, size, seed=seed)


def mnist_images(
    n: int, data_dir: str | None, seed: int, split: str = "train"
) -> tuple[Tensor, Tensor, str]:
    """The first ``n`` MNIST images and labels of ``split``, or random ones without the data."""
    from rprselect.data import load_mnist

    try:
        data = load_mnist(data_dir, split=split, download=False)
        return data.images[:n].clone(), data.labels[:n].clone(), f"MNIST {split}[:{n}]"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, 28, 28, generator=g)
        return x, torch.randint(0, 10, (n,), generator=g), "random images (MNIST not found)"
