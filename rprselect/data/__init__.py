"""Data loaders: MNIST and scikit-learn digits (torch + numpy only), BraTS (MONAI, nibabel)."""

from __future__ import annotations

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
]
