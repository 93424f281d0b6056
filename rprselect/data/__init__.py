"""Data loaders: MNIST and scikit-learn digits (torch + numpy only), BraTS (MONAI, nibabel)."""

from __future__ import annotations

from rprselect.data.brats import (
    LAYOUTS,
    MODALITIES,
    Case,
    CaseError,
    CaseList,
    LoadedCase,
    LoadedCases,
    canonical_modality,
    find_cases,
    load_case,
    load_cases,
)
from rprselect.data.mnist import (
    MNIST_FILES,
    MNIST_MIRRORS,
    ImageLabels,
    default_mnist_dir,
    imbalance_indices,
    load_digits_tensors,
    load_mnist,
    verify_mnist,
)
from rprselect.data.synthetic import write_synthetic_brats

__all__ = [
    # MNIST and digits
    "ImageLabels",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "default_mnist_dir",
    "imbalance_indices",
    "load_digits_tensors",
    "load_mnist",
    "verify_mnist",
    # BraTS (reading files needs MONAI and nibabel)
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
    "write_synthetic_brats",
]
