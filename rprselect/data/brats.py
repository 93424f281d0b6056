"""BraTS brain-tumour cases: find them on disk in any common layout, load them as arrays.

Recognised layouts (``layout=`` of :func:`find_cases`):

- ``"brats2020"``: ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``; also the 2018, 2019 and 2021
  releases (``Brats18_...``, ``BraTS19_...``, ``BraTS2021_XXXXX``), which name files the same way.
- ``"brats2023"``: ``BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t2f,t1n,t1c,t2w,seg}.nii.gz``.
- ``"msd"``: the Medical Segmentation Decathlon Task01, ``imagesTr/BRATS_XXX.nii.gz`` (4-D,
  channels FLAIR, T1w, T1gd, T2w) with ``labelsTr/BRATS_XXX.nii.gz``; ``imagesTs`` has no labels.
- ``"shared"``: ``<case>/{FLAIR,T1,T1CE,T2,GT_W}.nii.gz``, the layout of ``shared/data``.

Modalities go by their BraTS 2020 names ``flair``, ``t1``, ``t1ce`` and ``t2``; the 2023 and MSD
names (``t2f``, ``t1n``, ``t1c``, ``t1gd``, ``t2w``, ...) are accepted as aliases. The labels of
every layout are merged into one whole-tumour mask (label > 0), as in paper Section 1.4.

MONAI and nibabel are optional (``pip install rprselect[monai]``) and imported only when a file
is read or written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "LAYOUTS",
    "MODALITIES",
    "Case",
    "CaseError",
    "CaseList",
    "LoadedCase",
    "LoadedCases",
    "canonical_modality",
    "find_cases",
    "load_case",
    "load_cases",
]

MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
LAYOUTS: tuple[str, ...] = ("auto", "shared", "brats2020", "brats2021", "brats2023", "msd")

_ALIASES = {
    "flair": "flair", "t2f": "flair", "t2flair": "flair", "t2-flair": "flair",
    "t1": "t1", "t1n": "t1", "t1w": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1gad": "t1ce",
    "t2": "t2", "t2w": "t2",
}  # fmt: skip
MSD_CHANNEL = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
SUFFIX = {  # layout -> (file-name token of each modality, token of the label)
    "shared": ({"flair": "FLAIR", "t1": "T1", "t1ce": "T1CE", "t2": "T2"}, "GT_W"),
    "brats2020": ({"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}, "seg"),
    "brats2023": ({"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}, "seg"),
}
SEPARATOR = {"brats2020": "_", "brats2023": "-"}
_NII = re.compile(r"^(?P<stem>.+)\.nii(\.gz)?$")
_MONAI_HINT = "pip install rprselect[monai]"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # explicit: MONAI's default is changing


class CaseError(ValueError):
    """A case cannot be loaded; the message names the case and the file.

    Attributes:
        case_id: the case.
        path: the offending file, or ``None`` when the problem spans files.
    """

    def __init__(self, case_id: str, path: Path | None, reason: str) -> None:
        self.case_id = case_id
        self.path = path
        where = f" file {path}" if path is not None else ""
        super().__init__(f"case {case_id}{where}: {reason}")


@dataclass(frozen=True)
class Case:
    """One case on disk.

    Attributes:
        case_id: folder name, or file stem for the MSD layout.
        images: canonical modality -> file.
        label: segmentation file, or ``None`` for unlabelled cases.
        channels: canonical modality -> channel index, for 4-D files (MSD); empty otherwise.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None
    channels: dict[str, int] = field(default_factory=dict)


@dataclass
class CaseList:
    """Result of :func:`find_cases`: usable cases and the ones skipped, with the reason.

    Iterating, indexing and ``len`` act on ``cases``.
    """

    cases: list[Case]
    skipped: list[tuple[str, str]]

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Case:
        return self.cases[index]


class LoadedCase(NamedTuple):
    """Image ``(C, X, Y, Z)`` float32 and whole-tumour label ``(1, X, Y, Z)`` float32 in {0, 1}
    (``None`` for an unlabelled case)."""

    image: np.ndarray
    label: np.ndarray | None


@dataclass
class LoadedCases:
    """Result of :func:`load_cases`; ``skipped`` holds ``(case_id, reason)``."""

    case_ids: list[str]
    images: list[np.ndarray]
    labels: list[np.ndarray | None]
    skipped: list[tuple[str, str]]


def canonical_modality(name: str) -> str:
    """Map a modality name of any BraTS release or the MSD to ``flair``, ``t1``, ``t1ce``, ``t2``.

    Raises:
        ValueError: if the name is unknown.
    """
    key = str(name).strip().lower().replace("_", "")
    if key not in _ALIASES:
        raise ValueError(
            f"modality must be one of {MODALITIES} (or an alias such as t2f, t1n, t1c, t2w), "
            f"got {name!r}"
        )
    return _ALIASES[key]


def _canonical_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str) or not modalities:
        raise ValueError(f"modalities must be a non-empty sequence of names, got {modalities!r}")
    mods = tuple(canonical_modality(m) for m in modalities)
    if len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct, got {tuple(modalities)}")
    return mods


def _nifti_stems(folder: Path) -> dict[str, Path]:
    """Lower-case stem -> path of the visible NIfTI files in ``folder``."""
    stems: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        match = _NII.match(path.name)
        if match and path.is_file() and not path.name.startswith("."):
            stems.setdefault(match["stem"].lower(), path)
    return stems


def _match_layout(stems: dict[str, Path], layout: str) -> tuple[dict[str, Path], Path | None]:
    """Modality -> file and label file of one case folder under ``layout``."""
    tokens, label_token = SUFFIX[layout]
    found: dict[str, Path] = {}
    label: Path | None = None
    for stem, path in stems.items():
        token = stem if layout == "shared" else stem.rsplit(SEPARATOR[layout], 1)[-1]
        if token == label_token.lower():
            label = path
        for mod, tok in tokens.items():
            if token == tok.lower():
                found[mod] = path
    return found, label


def _case_from_folder(
    folder: Path, mods: tuple[str, ...], layout: str
) -> tuple[Case | None, str | None]:
    stems = _nifti_stems(folder)
    candidates = ("shared", "brats2023", "brats2020") if layout == "auto" else (layout,)
    best: tuple[dict[str, Path], Path | None] = ({}, None)
    best_layout = candidates[0]
    for name in candidates:
        found = _match_layout(stems, name)
        if len(found[0]) + (found[1] is not None) > len(best[0]) + (best[1] is not None):
            best, best_layout = found, name
    images, label = best
    if not images:
        return None, f"no NIfTI files of layout {layout!r} in {folder}"
    missing = [m for m in mods if m not in images]
    if missing:
        tokens = SUFFIX[best_layout][0]
        sep = SEPARATOR.get(best_layout, "")
        expected = ", ".join(
            f"{'' if best_layout == 'shared' else folder.name + sep}{tokens[m]}.nii.gz"
            for m in missing
        )
        return None, f"missing modality {', '.join(missing)} (expected {expected} in {folder})"
    return Case(folder.name, {m: images[m] for m in mods}, label), None


def _msd_cases(root: Path, mods: tuple[str, ...]) -> CaseList:
    cases: list[Case] = []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        if not (root / images_dir).is_dir():
            continue
        for path in _nifti_stems(root / images_dir).values():
            label = None
            if labels_dir is not None:
                candidate = root / labels_dir / path.name
                label = candidate if candidate.is_file() else None
            cases.append(
                Case(
                    path.name.split(".nii")[0],
                    {m: path for m in mods},
                    label,
                    channels={m: MSD_CHANNEL[m] for m in mods},
                )
            )
    return CaseList(sorted(cases, key=lambda c: c.case_id), [])


def find_cases(
    root: str | Path, modalities: Sequence[str] = ("flair", "t1"), layout: str = "auto"
) -> CaseList:
    """Find the cases under ``root`` that have every requested modality.

    Each sub-folder of ``root`` is one case (for the MSD layout, each file of ``imagesTr`` and
    ``imagesTs``). With ``layout="auto"`` the MSD layout is chosen when ``root/imagesTr`` exists,
    and otherwise each folder's layout is read from its file names. A folder that lacks a
    requested modality, or holds no recognised files, is not an error: it goes to ``skipped`` with
    the reason. A missing label is not a reason to skip; the case gets ``label=None``.

    Args:
        root: folder holding the case folders (or the MSD ``Task01_BrainTumour`` folder).
        modalities: modalities every case must have, in channel order.
        layout: one of ``LAYOUTS``; ``"brats2021"`` is the same as ``"brats2020"``.

    Returns:
        ``CaseList`` with the cases sorted by id and ``skipped`` as ``(case_id, reason)``.

    Raises:
        ValueError: if ``layout`` or a modality is unknown.
        FileNotFoundError: if ``root`` is not a folder.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    layout = "brats2020" if layout == "brats2021" else layout
    mods = _canonical_modalities(modalities)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root must be a folder of BraTS cases, got {root} (not a folder)")
    if layout == "msd" or (layout == "auto" and (root / "imagesTr").is_dir()):
        return _msd_cases(root, mods)
    result = CaseList([], [])
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        case, reason = _case_from_folder(folder, mods, layout)
        if case is not None:
            result.cases.append(case)
        else:
            result.skipped.append((folder.name, str(reason)))
    return result


def import_monai() -> tuple[Any, Any]:
    try:
        import monai.transforms as mt
        import nibabel as nib
    except ImportError as exc:
        raise ImportError(f"reading BraTS files needs MONAI and nibabel: {_MONAI_HINT}") from exc
    return mt, nib


def _read_nifti(nib: Any, case: Case, path: Path, channel: int | None) -> tuple[Any, Any]:
    """Array (float32, 3-D) and affine of one file, with every failure as a ``CaseError``."""
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError)
        raise CaseError(
            case.case_id, path, f"cannot be read (corrupt or truncated?): {exc}"
        ) from exc
    if channel is not None:
        if data.ndim != 4 or data.shape[3] <= channel:
            raise CaseError(
                case.case_id, path, f"must be 4-D with > {channel} channels, got {data.shape}"
            )
        data = data[..., channel]
    if data.ndim != 3:
        raise CaseError(case.case_id, path, f"must hold a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise CaseError(case.case_id, path, "contains NaN or infinite values")
    return data, np.asarray(img.affine, dtype=np.float64)


def _nonzero(x: Any) -> Any:
    return x != 0


def load_case(
    case: Case, modalities: Sequence[str] | None = None, spacing: float | None = None
) -> LoadedCase:
    """Load one case as arrays ready for a 3-D CNN.

    The volumes are reoriented to RAS, optionally resampled to ``spacing`` mm (bilinear for the
    image, nearest for the label), cropped to the bounding box of the nonzero (brain) voxels, and
    each channel is normalised to zero mean and unit variance over its nonzero voxels (MONAI's
    ``Orientationd``, ``Spacingd``, ``CropForegroundd``, ``NormalizeIntensityd``). Background
    voxels stay 0. Labels > 0 are merged into one whole-tumour mask.

    Args:
        case: a case from :func:`find_cases`.
        modalities: channels to load, in order; all of ``case.images`` if ``None``.
        spacing: isotropic voxel size in mm (e.g. 2.0 or 4.0), or ``None`` to keep the grid.

    Returns:
        ``LoadedCase(image, label)``: image ``(C, X, Y, Z)`` float32 and label ``(1, X, Y, Z)``
        float32 in {0, 1}, or ``None`` if the case has no label file.

    Raises:
        CaseError: if a file is corrupt or truncated, holds NaN, or its shape or affine differs
            from the others; the message names the case and the file.
        ValueError: if ``spacing`` is not positive or a modality is not in the case.
        ImportError: if MONAI or nibabel is missing.
    """
    mods = _canonical_modalities(modalities if modalities is not None else tuple(case.images))
    missing = [m for m in mods if m not in case.images]
    if missing:
        raise ValueError(
            f"modalities must be among those of case {case.case_id} {tuple(case.images)}, "
            f"got {tuple(mods)}"
        )
    if spacing is not None and not (isinstance(spacing, (int, float)) and spacing > 0):
        raise ValueError(f"spacing must be a positive number of mm or None, got {spacing!r}")
    mt, nib = import_monai()
    from monai.data import MetaTensor

    arrays, affine, first = [], None, None
    for mod in mods:
        data, aff = _read_nifti(nib, case, case.images[mod], case.channels.get(mod))
        if first is None:
            first, affine = (case.images[mod], data.shape), aff
        _check_same_grid(case, case.images[mod], data.shape, aff, first, affine)
        arrays.append(data)
    sample = {"image": MetaTensor(np.stack(arrays), affine=affine)}
    keys = ["image"]
    if case.label is not None:
        label, aff = _read_nifti(nib, case, case.label, None)
        _check_same_grid(case, case.label, label.shape, aff, first, affine)
        sample["label"] = MetaTensor((label > 0)[None].astype(np.float32), affine=affine)
        keys.append("label")
    modes = ["bilinear", "nearest"][: len(keys)]
    steps = [mt.Orientationd(keys, axcodes="RAS", labels=_RAS_LABELS)]
    if spacing is not None:
        steps.append(
            mt.Spacingd(keys, pixdim=(float(spacing),) * 3, mode=modes, padding_mode="zeros")
        )
    steps += [
        mt.CropForegroundd(keys, source_key="image", select_fn=_nonzero, allow_smaller=True),
        mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ]
    out = mt.Compose(steps)(sample)
    image = np.ascontiguousarray(np.asarray(out["image"].array, dtype=np.float32))
    labels = None
    if "label" in out:
        labels = (np.asarray(out["label"].array) > 0.5).astype(np.float32)
    return LoadedCase(image, labels)


def _check_same_grid(
    case: Case, path: Path, shape: tuple[int, ...], aff: Any, first: Any, affine: Any
) -> None:
    first_path, first_shape = first
    if shape != first_shape:
        raise CaseError(
            case.case_id, path, f"shape must match {first_path.name} {first_shape}, got {shape}"
        )
    if not np.allclose(aff, affine, atol=1e-3):
        raise CaseError(case.case_id, path, f"affine differs from that of {first_path.name}")


def load_cases(
    cases: CaseList | Sequence[Case],
    modalities: Sequence[str] | None = None,
    spacing: float | None = None,
) -> LoadedCases:
    """Load many cases, skipping (and recording) those that raise ``CaseError``.

    Args:
        cases: from :func:`find_cases`; a ``CaseList``'s own ``skipped`` entries are carried over.
        modalities: as in :func:`load_case`.
        spacing: as in :func:`load_case`.

    Returns:
        ``LoadedCases`` with the loaded arrays in order and ``skipped`` as ``(case_id, reason)``.
    """
    skipped = list(cases.skipped) if isinstance(cases, CaseList) else []
    result = LoadedCases([], [], [], skipped)
    for case in cases:
        try:
            image, label = load_case(case, modalities, spacing)
        except CaseError as exc:
            result.skipped.append((case.case_id, str(exc)))
            continue
        result.case_ids.append(case.case_id)
        result.images.append(image)
        result.labels.append(label)
    return result
