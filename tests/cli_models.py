"""Tiny bias-free models for the scoring, cache and CLI tests, importable as
``cli_models:<factory>`` (the tests put this folder on ``PYTHONPATH`` for subprocesses).

Every factory seeds its own weights, so two calls build identical models.
"""

from __future__ import annotations

import torch
from torch import nn

from rprselect.layers import SumPool


def tiny_cnn() -> nn.Module:
    """Classifier of ``(1, 8, 8)`` images into 5 classes: A[x] is 5 x 64."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        SumPool(2),
        nn.Flatten(),
        nn.Linear(4 * 16, 5, bias=False),
    )


def tiny_binary() -> nn.Module:
    """A binary classifier of ``(1, 8, 8)`` images: A[x] is 2 x 64, so k is at most 2."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        SumPool(2),
        nn.Flatten(),
        nn.Linear(64, 2, bias=False),
    )


def tiny_cnn_rgb() -> nn.Module:
    """Classifier of ``(3, 8, 8)`` images into 5 classes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.ReLU(),
        SumPool(2),
        nn.Flatten(),
        nn.Linear(4 * 16, 5, bias=False),
    )


def tiny_cnn3d() -> nn.Module:
    """Classifier of ``(1, 8, 8, 8)`` volumes into 4 classes: A[x] is 4 x 512."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        SumPool(3),
        nn.Flatten(),
        nn.Linear(2 * 64, 4, bias=False),
    )


def tiny_seg3d() -> nn.Module:
    """Fully convolutional segmenter of ``(1, *spatial)`` volumes, for sliding windows."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv3d(2, 1, 1, bias=False),
    )


NOT_A_FACTORY = 3


def tiny_seg2d() -> nn.Module:
    """Fully convolutional ``(1, H, W) -> (2, H, W)``: A[x] is 2HW x HW, large for dense."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False))


class _Noisy(nn.Module):
    """``tiny_cnn`` with a GELU (no adjoint rule: autograd, and a warning per batch) whose
    forward also warns, as user code and third-party libraries do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1, bias=False),
            nn.GELU(),
            SumPool(2),
            nn.Flatten(),
            nn.Linear(4 * 16, 5, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import warnings

        warnings.warn("`torch.jit.script` is deprecated (model)", DeprecationWarning, stacklevel=1)
        warnings.warn("a user warning from the model", UserWarning, stacklevel=1)
        return self.net(x)


def noisy_cnn() -> nn.Module:
    """A model whose forward warns (deprecation and user warnings) and needs autograd."""
    return _Noisy()


def tiny_mlp() -> nn.Module:
    """Classifier of ``(1, 8, 8)`` images with no convolution: its sample shape is unknown."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6, bias=False), nn.ReLU(),
                         nn.Linear(6, 3, bias=False))  # fmt: skip
