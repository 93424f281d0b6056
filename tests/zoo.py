"""A zoo of tiny CNNs for dense-oracle tests of the A[x] operator and its adjoint.

Every case builds a float64 model in eval mode with seeded weights and a seeded input, small
enough that ``torch.func.jacrev`` materialises A[x] in milliseconds. The cases cover every layer
type the explicit Adjoint CNN has a rule for (paper Table 1 and the general-CNN extras): sum and
max pooling (overlapping windows, padding, ceil_mode, functional), transposed convolutions,
Conv1d/2d/3d with padding/stride/dilation/groups, LeakyReLU, eval-mode batch norm, average
pooling, nearest resampling (also to non-integer sizes), dropout/identity, reshapes, residual
sums, concatenation skips, permutes, slicing and harmless in-place operations.

Import it from other test modules (``from zoo import CASES``) to reuse the models::

    for case in CASES:
        model, x = case.build()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rprselect.layers import NearestUpsample, SumPool
from rprselect.models import MNISTNet, PocketUNet, SimpleCNN

__all__ = ["Case", "CASES", "CASE_IDS", "case_by_name"]


@dataclass(frozen=True)
class Case:
    """One zoo entry.

    Attributes:
        name: readable test id.
        factory: builds the (float32 or float64) model; the case seeds it and casts to float64.
        input_shape: per-sample shape ``(C, *spatial)``.
        homogeneous: whether ``A[x] x == F(x)`` (bias-free, no normalisation shift).
        num_classes: number of classes for a classifier (LPR uses ``label_logits``), else None.
        seed: seed of the weights and of the input.
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    homogeneous: bool = True
    num_classes: int | None = None
    seed: int = 0

    def build(self) -> tuple[nn.Module, Tensor]:
        """The float64 eval-mode model and one input sample ``x`` of ``input_shape``."""
        torch.manual_seed(self.seed)
        model = self.factory().double().eval()
        g = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(self.input_shape, generator=g, dtype=torch.float64)
        return model, x


# -- models ------------------------------------------------------------------------------------


def _simple_cnn() -> nn.Module:
    """The CNN primer's SimpleCNN with random batch-norm running statistics."""
    model = SimpleCNN()
    for bn in (model.bn1, model.bn2):
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.3, 0.3)
    return model


class MaxPoolNet(nn.Module):
    """Max pooling: overlapping windows with padding and ceil_mode, then functional max_pool2d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.fc = nn.Linear(3 * 4 * 4, 5, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv(x)))  # 6x6 -> 4x4 (3x3 without ceil_mode), overlapping
        x = F.max_pool2d(x, kernel_size=2, stride=1, padding=1)  # 4x4 -> 5x5
        x = x[:, :, 1:, 1:]  # slicing -> 4x4
        return self.fc(x.flatten(1))


class MaxPool1d3dNet(nn.Module):
    """MaxPool1d with dilation and MaxPool3d, on a Conv3d feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1, bias=False)
        self.pool3 = nn.MaxPool3d(2)
        self.pool1 = nn.MaxPool1d(2, stride=1, dilation=2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool3(self.conv(x))  # (2, 2, 2, 2)
        x = x.reshape(x.shape[0], 2, 8)
        return self.pool1(x)  # (2, 6)


class ConvTransposeNet(nn.Module):
    """Strided convolution down, then ConvTranspose2d/1d/3d with stride, output_padding, groups
    and dilation up."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
        self.up = nn.ConvTranspose2d(
            4, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1, bias=False
        )
        self.up_dil = nn.ConvTranspose2d(4, 2, 2, stride=1, dilation=2, bias=False)
        self.up1d = nn.ConvTranspose1d(2, 1, 3, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.down(x), 0.1)  # 6x6 -> 3x3
        x = F.relu(self.up(x))  # 3x3 -> 6x6
        x = self.up_dil(x)  # 6x6 -> 8x8
        x = x.flatten(2)[:, :, :10]  # (2, 10)
        return self.up1d(x)  # (1, 21)


class ConvTranspose3dNet(nn.Module):
    """ConvTranspose3d with stride, padding, output_padding and groups.

    Overlapping windows (kernel 3, stride 2): a non-overlapping ``kernel == stride`` layer has
    exactly repeated singular values, which single-vector Lanczos cannot resolve.
    """

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(
            2, 2, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.up(x))


class ConvNDNet(nn.Module):
    """Conv1d/2d/3d with padding, stride, dilation, groups and padding='same', LeakyReLU module."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv3d(
            2, 4, 3, stride=(1, 2, 1), padding=(1, 0, 2), dilation=(2, 1, 1), groups=2, bias=False
        )
        self.act = nn.LeakyReLU(0.2)
        self.c2 = nn.Conv2d(4, 4, 3, padding="same", dilation=2, groups=4, bias=False)
        self.c1 = nn.Conv1d(4, 2, 2, stride=2, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.c3(x))  # (2, 4, 5, 4) -> (4, 2, 2, 6)
        x = x.reshape(x.size(0), 4, 4, 6)  # (N, C, D*H, W)
        x = self.act(self.c2(x))
        x = x.view(x.size(0), 4, -1)  # (4, 24)
        return self.c1(x)  # (2, 13)


class BatchNormNet(nn.Module):
    """Bias-free convolutions with eval-mode batch norm (its shift makes A[x]x != F(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(3 * 4 * 4, 4, bias=False)
        for bn in (self.bn, self.bn1d):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.3, 0.3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.bn(self.conv(x)))
        return self.bn1d(self.fc(torch.flatten(x, 1)))


class AvgPoolNet(nn.Module):
    """Average pooling with padding, counting the padding and not, in 1-D, 2-D and 3-D."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.pool_in = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True)
        self.pool_ex = nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False, ceil_mode=True)
        self.pool1d = nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False)
        self.pool3d = nn.AvgPool3d(2, stride=1, padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))  # (2, 5, 5)
        a = self.pool_in(x)  # (2, 3, 3)
        b = self.pool_ex(a)  # (2, 4, 4)
        c = F.avg_pool2d(b, 2)  # (2, 2, 2)
        d = self.pool1d(b.flatten(2))  # (2, 8)
        e = self.pool3d(a.unsqueeze(1))  # (1, 3, 4, 4)
        return torch.cat([c.flatten(1), d.flatten(1), e.flatten(1)], dim=1)


class UpsampleNet(nn.Module):
    """Nearest resampling: nn.Upsample, F.interpolate to a non-integer size and scale factor,
    nearest-exact, and the paper's NearestUpsample/SumPool pair (also on an odd size)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pool = SumPool(2)
        self.up2 = NearestUpsample(2)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))  # (2, 3, 4)
        a = self.up(x)  # (2, 6, 8)
        b = F.interpolate(a, size=(7, 5))  # non-integer ratios
        c = F.interpolate(x, scale_factor=1.5, mode="nearest-exact")  # (2, 4, 6)
        d = self.up2(self.pool(c))  # (2, 4, 6)
        e = F.interpolate(x.flatten(2), size=5)  # 1-D: (2, 12) -> (2, 5)
        f = self.pool(x)  # odd size: (2, 3, 4) -> (2, 1, 2), the last row is dropped
        return torch.cat([b.flatten(1), d.flatten(1), e.flatten(1), f.flatten(1)], 1)


class PlumbingNet(nn.Module):
    """Dropout/Identity in eval, flatten/view/reshape, residual +, cat skips, permute, transpose,
    slicing and scalar multiples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 3, 1, bias=False)
        self.drop = nn.Dropout(0.5)
        self.drop2d = nn.Dropout2d(0.3)
        self.ident = nn.Identity()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5 * 3 * 4, 6, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv1(x))
        h = self.drop(h) + x  # residual
        h = torch.cat([h, self.ident(x)], dim=1)  # skip: (4, 5, 4)
        h = self.drop2d(self.conv2(h))  # (3, 5, 4)
        h = F.dropout(h, p=0.2, training=self.training)
        h = h.permute(0, 2, 3, 1)  # (5, 4, 3)
        h = h.transpose(1, 2).contiguous()  # (4, 5, 3)
        h = h - 0.5 * h[..., 0:1]  # slicing after an ellipsis, sub, scalar mul
        h = torch.reshape(h, (h.shape[0], 5, 3, 4)) / 2.0
        return self.fc(self.flat(h))


class InplaceResNet(nn.Module):
    """A ResNet basic block's in-place habits: ``ReLU(inplace=True)``, ``out += identity``,
    ``F.relu(..., inplace=True)``, none of which overwrites a tensor that is read later."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += identity
        out = F.relu(out, inplace=True)
        return self.pool(out)


def _pocket_unet() -> nn.Module:
    return PocketUNet(in_channels=2, out_channels=2, dims=3, depth=2, filters=3)


# -- the cases ---------------------------------------------------------------------------------

CASES: list[Case] = [
    Case("mnist8", lambda: MNISTNet(in_size=8), (1, 8, 8), num_classes=10),
    Case("mnist28", MNISTNet, (1, 28, 28), num_classes=10),
    Case("simplecnn", _simple_cnn, (1, 28, 28), homogeneous=False, num_classes=10),
    Case("pocket_unet3d", _pocket_unet, (2, 4, 4, 4)),
    Case("maxpool2d", MaxPoolNet, (2, 6, 6)),
    Case("maxpool1d3d", MaxPool1d3dNet, (1, 4, 4, 4)),
    Case("conv_transpose", ConvTransposeNet, (2, 6, 6)),
    Case("conv_transpose3d", ConvTranspose3dNet, (2, 2, 2, 2)),
    Case("conv_nd", ConvNDNet, (2, 4, 5, 4)),
    Case("batchnorm", BatchNormNet, (1, 6, 6), homogeneous=False),
    Case("avgpool", AvgPoolNet, (1, 5, 5)),
    Case("upsample", UpsampleNet, (1, 3, 4)),
    Case("plumbing", PlumbingNet, (2, 5, 4)),
    Case("inplace_resnet", InplaceResNet, (2, 4, 4)),
]
CASE_IDS = [c.name for c in CASES]


def case_by_name(name: str) -> Case:
    """The zoo case called ``name``."""
    for c in CASES:
        if c.name == name:
            return c
    raise KeyError(f"no zoo case {name!r}; have {CASE_IDS}")
