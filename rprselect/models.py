"""Reference networks: the paper's bias-free CNNs and a general CNN for the Jacobian path.

``MNISTNet`` (paper Section 1.3) and ``PocketUNet`` (paper Section 1.4) use only bias-free
convolutions and linear maps, ReLU, sum pooling and nearest-neighbour upsampling. Such a network is
positively homogeneous, :math:`\\mathcal{F}_\\theta(x) = A[x]\\,x`, so the explicit Adjoint CNN can
build :math:`A[x]^T` layer by layer. ``SimpleCNN`` has biases, batch normalisation and max pooling;
it exercises the general (Jacobian) path.

Every forward is ``torch.fx`` symbolically traceable: no Python branch depends on tensor values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from rprselect.layers import NearestUpsample, SumPool

__all__ = ["MNISTNet", "PocketUNet", "SimpleCNN"]

_CONV: dict[int, type[nn.Conv2d] | type[nn.Conv3d]] = {2: nn.Conv2d, 3: nn.Conv3d}


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class MNISTNet(nn.Module):
    """The paper's bias-free MNIST classifier (Section 1.3).

    Conv(1→32, 5x5) → ReLU → SumPool → Conv(32→64, 5x5) → ReLU → SumPool → Linear(→512) → ReLU →
    Linear(→256) → ReLU → Linear(→10). No layer has a bias, so the logits are
    :math:`A[x]\\,x` with :math:`A[x] \\in \\mathbb{R}^{10 \\times 28^2}`. The softmax of the paper
    belongs to the loss, not to the network.

    Args:
        dropout: probability of the ``nn.Dropout`` placed after each hidden Linear+ReLU, for
            MC-dropout baselines; ``0.0`` (the default) adds no dropout module at all.
        in_size: edge of the square input image, a multiple of 4: 28 for MNIST, 8 for
            scikit-learn's digits.

    Raises:
        ValueError: if ``dropout`` is outside ``[0, 1)`` or ``in_size`` is not a positive
            multiple of 4.
    """

    def __init__(self, dropout: float = 0.0, in_size: int = 28) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must satisfy 0 <= dropout < 1, got {dropout}")
        _check_positive_int("in_size", in_size, minimum=4)
        if in_size % 4:
            raise ValueError(f"in_size must be a multiple of 4 (two 2x2 poolings), got {in_size}")
        self.dropout = float(dropout)
        self.in_size = in_size
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2, bias=False)
        self.relu1 = nn.ReLU()
        self.pool1 = SumPool(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2, bias=False)
        self.relu2 = nn.ReLU()
        self.pool2 = SumPool(2)
        self.fc1 = nn.Linear(64 * (in_size // 4) ** 2, 512, bias=False)
        self.relu3 = nn.ReLU()
        self.drop1: nn.Dropout | None = nn.Dropout(dropout) if dropout > 0 else None
        self.fc2 = nn.Linear(512, 256, bias=False)
        self.relu4 = nn.ReLU()
        self.drop2: nn.Dropout | None = nn.Dropout(dropout) if dropout > 0 else None
        self.fc3 = nn.Linear(256, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits, shape ``(N, 10)``, of images of shape ``(N, 1, in_size, in_size)``."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        if self.drop1 is not None:
            x = self.drop1(x)
        x = self.relu4(self.fc2(x))
        if self.drop2 is not None:
            x = self.drop2(x)
        return self.fc3(x)


class PocketUNet(nn.Module):
    """Bias-free UNet of the "pocket" paradigm (paper Section 1.4; Celaya et al. 2024).

    Every level has the same number of filters. A level is ``convs_per_level`` pairs of
    (3x3[x3] convolution without bias, ReLU). The encoder goes down by ``SumPool`` and the decoder
    up by ``NearestUpsample``; each decoder level concatenates the encoder features of the same
    resolution along channels. A final 1x1 convolution maps to ``out_channels``. The paper's
    network is ``PocketUNet(4, 2, dims=3, depth=5, filters=32)`` on 128³ patches.

    Args:
        in_channels: input channels (MRI modalities).
        out_channels: output channels (classes, before any softmax).
        dims: number of spatial dimensions, 2 or 3.
        depth: number of resolution levels; the input is pooled ``depth - 1`` times.
        filters: channels of every convolution but the last.
        convs_per_level: convolution+ReLU pairs per level.

    Raises:
        ValueError: if ``dims`` is not 2 or 3 or a size argument is not a positive int.
        TypeError: if a size argument is not an int.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 2,
        dims: int = 3,
        depth: int = 5,
        filters: int = 32,
        convs_per_level: int = 2,
    ) -> None:
        super().__init__()
        if dims not in _CONV:
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("depth", depth),
            ("filters", filters),
            ("convs_per_level", convs_per_level),
        ):
            _check_positive_int(name, value)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dims = dims
        self.depth = depth
        self.filters = filters
        self.convs_per_level = convs_per_level

        self.encoders = nn.ModuleList(
            [self._level(in_channels if i == 0 else filters) for i in range(depth)]
        )
        self.pools = nn.ModuleList([SumPool(dims) for _ in range(depth - 1)])
        self.ups = nn.ModuleList([NearestUpsample(2) for _ in range(depth - 1)])
        self.decoders = nn.ModuleList([self._level(2 * filters) for _ in range(depth - 1)])
        self.head = _CONV[dims](filters, out_channels, kernel_size=1, bias=False)

    def _level(self, in_ch: int) -> nn.Sequential:
        conv = _CONV[self.dims]
        layers: list[nn.Module] = []
        for j in range(self.convs_per_level):
            layers.append(
                conv(in_ch if j == 0 else self.filters, self.filters, 3, padding=1, bias=False)
            )
            layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this, ``2 ** (depth - 1)``."""
        return 2 ** (self.depth - 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Check the shape of an input batch.

        Args:
            x: tensor of shape ``(N, in_channels, *spatial)`` with ``dims`` spatial sizes.

        Raises:
            ValueError: if the rank, the channels or a spatial size is wrong.
        """
        if x.dim() != self.dims + 2:
            raise ValueError(
                f"x must have shape (N, C, {', '.join('XYZ'[: self.dims])}), got {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have {self.in_channels} channels (dim 1), got shape {tuple(x.shape)}"
            )
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(
                f"spatial sizes of x must be divisible by 2**(depth-1) = {m} for depth="
                f"{self.depth}, got {tuple(x.shape[2:])}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits, shape ``(N, out_channels, *spatial)``."""
        if not isinstance(x, fx.Proxy):  # shapes are unknown while tracing
            self.check_input(x)
        skips: list[torch.Tensor] = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x)
            if i < self.depth - 1:
                skips.append(x)
                x = self.pools[i](x)
        for i, decoder in enumerate(self.decoders):
            x = self.ups[i](x)
            x = decoder(torch.cat([x, skips[-1 - i]], dim=1))
        return self.head(x)


class SimpleCNN(nn.Module):
    """The general CNN of the CNN primer, with biases, batch normalisation and max pooling.

    It is not positively homogeneous, so only the Jacobian path applies to it. Inputs are
    ``(N, 1, 28, 28)`` and outputs ``(N, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits, shape ``(N, 10)``."""
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)
