"""Synthetic BraTS-like cases on disk, for quick tests and benchmarks without real data.

Each case is a brain-like ellipsoid (background exactly 0, as in skull-stripped BraTS) with one or
two bright blob "tumours". It is written as NIfTI in any layout that :func:`find_cases` reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rprselect.data.brats import (
    MODALITIES,
    MSD_CHANNEL,
    SEPARATOR,
    SUFFIX,
    canonical_modality,
    import_monai,
)

__all__ = ["write_synthetic_brats"]

_SYNTHETIC_LAYOUTS = ("shared", "brats2020", "brats2023", "msd")
# Mean intensity of (brain, tumour) per modality, loosely like MRI contrasts.
_CONTRAST = {
    "flair": (100.0, 220.0),
    "t1": (120.0, 70.0),
    "t1ce": (110.0, 200.0),
    "t2": (90.0, 230.0),
}
# LPS affine on a 1 mm grid, like the BraTS files, so loading exercises the RAS reorientation.
_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def _case_id(layout: str, i: int) -> str:
    return {
        "shared": f"Synth_{i:03d}",
        "brats2020": f"BraTS20_Training_{i + 1:03d}",
        "brats2023": f"BraTS-GLI-{i:05d}-000",
        "msd": f"BRATS_{i + 1:03d}",
    }[layout]


def _phantom(
    shape: tuple[int, int, int], mods: Sequence[str], rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Volumes per modality and a label map: 1 = tumour core, 2 = surrounding rim ("oedema")."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    centre = np.array(shape, dtype=np.float64)[:, None, None, None] / 2 - 0.5
    radii = (
        np.array(shape, dtype=np.float64)[:, None, None, None]
        * rng.uniform(0.36, 0.44, 3)[:, None, None, None]
    )
    brain = (((grid - centre) / radii) ** 2).sum(0) <= 1.0
    label = np.zeros(shape, dtype=np.uint8)
    inside = np.argwhere(brain)
    for _ in range(int(rng.integers(1, 3))):
        r = float(rng.uniform(0.08, 0.14) * min(shape))
        far = inside[np.all(np.abs(inside - centre[:, 0, 0, 0]) < radii[:, 0, 0, 0] * 0.55, 1)]
        c = far[rng.integers(len(far))]
        dist = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0))
        label[(dist <= 1.4 * r) & brain & (label == 0)] = 2
        label[(dist <= r) & brain] = 1
    volumes = {}
    for mod in mods:
        base, tumour = _CONTRAST[mod]
        vol = base * (1.0 + 0.1 * rng.standard_normal(shape))
        vol[label > 0] = tumour * (1.0 + 0.1 * rng.standard_normal(int((label > 0).sum())))
        vol[~brain] = 0.0
        volumes[mod] = np.clip(vol, 0.0, None).astype(np.float32)
    return volumes, label


def write_synthetic_brats(
    root: str | Path,
    n_cases: int = 6,
    shape: tuple[int, int, int] = (48, 48, 32),
    modalities: Sequence[str] = ("FLAIR", "T1"),
    seed: int = 0,
    layout: str = "shared",
) -> list[str]:
    """Write ``n_cases`` synthetic cases under ``root``.

    Labels are 1 in each blob's core and 2 in a rim around it (a multi-label map like BraTS; the
    ``"shared"`` layout stores the merged mask, 1 everywhere in the blob), so loaders must merge
    labels > 0. The ``"msd"`` layout always writes the four MSD channels.

    Args:
        root: output folder, created if needed.
        n_cases: number of cases.
        shape: volume size in voxels (1 mm isotropic).
        modalities: modalities to write (any alias of ``MODALITIES``).
        seed: seed of the phantoms; the same arguments write the same files.
        layout: ``"shared"``, ``"brats2020"``, ``"brats2023"`` or ``"msd"``.

    Returns:
        The case ids written, in order.

    Raises:
        ValueError: if an argument is out of range or the layout or a modality is unknown.
        ImportError: if nibabel or MONAI is missing.
    """
    if layout not in _SYNTHETIC_LAYOUTS:
        raise ValueError(f"layout must be one of {_SYNTHETIC_LAYOUTS}, got {layout!r}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {tuple(shape)}")
    mods = [canonical_modality(m) for m in modalities]
    if layout == "msd":
        mods = list(MODALITIES)
    _, nib = import_monai()
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n_cases):
        case_id = _case_id(layout, i)
        volumes, label = _phantom(tuple(int(s) for s in shape), mods, rng)  # type: ignore[arg-type]
        if layout == "msd":
            stack = np.stack(
                [volumes[m] for m in sorted(mods, key=MSD_CHANNEL.__getitem__)], axis=-1
            )
            for sub, data in (("imagesTr", stack), ("labelsTr", label)):
                (root / sub).mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(data, _AFFINE), root / sub / f"{case_id}.nii.gz")
            ids.append(case_id)
            continue
        folder = root / case_id
        folder.mkdir(parents=True, exist_ok=True)
        tokens, label_token = SUFFIX[layout]
        prefix = "" if layout == "shared" else case_id + SEPARATOR[layout]
        for mod in mods:
            nib.save(
                nib.Nifti1Image(volumes[mod], _AFFINE), folder / f"{prefix}{tokens[mod]}.nii.gz"
            )
        seg = (label > 0).astype(np.uint8) if layout == "shared" else label
        nib.save(nib.Nifti1Image(seg, _AFFINE), folder / f"{prefix}{label_token}.nii.gz")
        ids.append(case_id)
    return ids
