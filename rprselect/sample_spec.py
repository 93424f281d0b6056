"""What one sample of a model looks like, read from the model's first convolution.

A pool is a stack of samples ``(N, C, *spatial)``; a model takes one sample ``(C, *spatial)``
(plus the batch axis it is called with). When the first convolution of the model is a
``Conv{1,2,3}d``, a sample has ``1 + dims`` dimensions and, usually, ``in_channels`` channels.
:mod:`rprselect.pool` uses this to read a stacked array file as N samples and to refuse a pool
that lacks its batch dimension with a message naming the layer, instead of an error from deep
inside the linearisation.

Only the number of dimensions is enforced. The channel count is a hint: the first convolution
in registration order is usually, but not always, the first one applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["SampleSpec", "sample_spec"]

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


@dataclass(frozen=True)
class SampleSpec:
    """The shape a model takes for one sample.

    Attributes:
        ndim: dimensions of one sample, ``1 + spatial dims`` (3 for a ``Conv2d`` model).
        channels: ``in_channels`` of the first convolution, or ``None`` when unknown (lazy).
        layer: the layer it was read from, e.g. ``"Conv2d(1, 4, kernel_size=(3, 3)) ('0')"``.
    """

    ndim: int
    channels: int | None
    layer: str

    def sample(self) -> str:
        """One sample as text, e.g. ``"(1, H, W)"``."""
        c = "C" if self.channels is None else str(self.channels)
        return f"({c}, {_SPATIAL.get(self.ndim - 1, '*spatial')})"

    def batch(self) -> str:
        """A pool as text, e.g. ``"(N, 1, H, W)"``."""
        return "(N, " + self.sample()[1:]

    def describe(self) -> str:
        """``"the model's first layer Conv2d(...) ('0') takes samples (1, H, W) (3 dims)"``."""
        return (
            f"the model's first layer {self.layer} takes samples {self.sample()} ({self.ndim} dims)"
        )


def sample_spec(model: nn.Module) -> SampleSpec | None:
    """The sample shape of ``model`` from its first convolution, or ``None`` when unknown.

    The first ``nn.Conv1d``/``Conv2d``/``Conv3d`` (or transposed convolution) in
    ``model.named_modules()`` order gives the dimensions. ``None`` is returned when the model
    has no convolution, when its convolutions disagree on the number of spatial dimensions, or
    when a layer that changes the rank of its input (``Flatten``, ``Unflatten``) or another
    layer with parameters (e.g. a ``Linear`` stem) comes before that convolution: then the
    convolution need not see the sample as given.
    """
    if not isinstance(model, nn.Module):
        return None
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs or len({len(m.kernel_size) for m in convs}) != 1:
        return None
    first: tuple[str, nn.modules.conv._ConvNd] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            first = name, m
            break
        is_leaf = next(m.children(), None) is None
        has_params = next(m.parameters(recurse=False), None) is not None
        norm = isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
        if isinstance(m, nn.Flatten | nn.Unflatten) or (is_leaf and has_params and not norm):
            return None
    if first is None:  # unreachable: convs is not empty
        return None
    name, m = first
    channels = int(m.in_channels) if m.in_channels > 0 else None  # 0: a lazy conv
    layer = f"{m.__class__.__name__}({m.in_channels}, {m.out_channels}, "
    layer += f"kernel_size={tuple(m.kernel_size)}) ({name or 'the model'!r})"
    return SampleSpec(ndim=1 + len(m.kernel_size), channels=channels, layer=layer)
