"""A[x] of a whole volume stitched from sliding windows, as MONAI's inferer computes F(x).

The paper (Section 1.4) trains and scores its UNet with MONAI's ``sliding_window_inference``:
the volume is padded up to the window size where it is smaller, cut into overlapping windows
on a regular grid, each window goes through the network, and the window outputs are blended
with an importance map ``w`` (constant or Gaussian):

.. math::
    F(x) = C\\,\\frac{\\sum_i P_i^T (w \\odot F(P_i\\, \\Pi x))}{\\sum_i P_i^T w},
    \\qquad F(P_i \\Pi x) = A[P_i \\Pi x]\\, P_i \\Pi x,

with ``Π`` the padding, ``P_i`` the extraction of window ``i`` and ``C`` the crop back to the
volume. Padding, extraction, weighting and cropping are linear, so the whole-volume matrix is

.. math:: A[x] = C\\, D^{-1} \\Big(\\sum_i P_i^T W A[P_i \\Pi x] P_i\\Big) \\Pi,
    \\qquad A[x]^T = \\Pi^T \\Big(\\sum_i P_i^T A[P_i \\Pi x]^T W P_i\\Big) D^{-1} C^T,

with ``W`` the window weights and ``D`` the summed weights (both diagonal). This module builds
it from :func:`~rprselect.linearize_batch` on the windows, so every network pass carries a whole
group of windows times all the vectors. This module imports torch only: the window grid is
re-derived here (and checked against MONAI in the tests).

**Streaming.** Recording ``A[P_i Π x]`` (ReLU masks, pooling indices) for every window costs
``N_w r_w`` bytes: about 26 GiB for a 240x240x155 volume, a 128³ window and the paper's 3-D UNet.
With ``stream=True`` the operator keeps only the model, the padded volume and the window list;
every product records one group of windows, applies it and frees it before the next group, so
only ``sw_batch_size`` windows' recordings are alive at a time. The recording is a forward pass
per group per product (about twice the network cost of a recorded product), and the numbers are
the same: a recording is a deterministic function of the window.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .linearize import Method, linearize_batch
from .modes import eval_mode
from .operator import LinearOperator

__all__ = [
    "SlidingWindowOperator",
    "WindowGrid",
    "sliding_window_operator",
    "window_grid",
    "importance_map",
]

BlendMode = Literal["constant", "gaussian"]
PaddingMode = Literal["constant", "reflect", "replicate", "circular"]
_PAD_MODES = ("constant", "reflect", "replicate", "circular")
Window = tuple[slice, ...]


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows lie, with MONAI's rules (``_get_scan_interval``, ``dense_patch_slices``).

    Attributes:
        image_size: spatial size of the volume.
        roi_size: window size, with non-positive entries replaced by the image size.
        padded_size: ``max(image_size, roi_size)`` per axis.
        pad: ``(before, after)`` padding per axis, ``before = (roi - image) // 2``.
        scan_interval: step between window starts per axis.
        windows: slices of every window in the padded volume, in MONAI's order.
    """

    image_size: tuple[int, ...]
    roi_size: tuple[int, ...]
    padded_size: tuple[int, ...]
    pad: tuple[tuple[int, int], ...]
    scan_interval: tuple[int, ...]
    windows: tuple[Window, ...]


def _per_axis(name: str, value: object, nd: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * nd
    if (
        isinstance(value, Sequence)
        and len(value) == nd
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(float(v) for v in value)
    raise ValueError(
        f"{name} must be a number or {nd} numbers (one per spatial axis), got {value!r}"
    )


def window_grid(
    image_size: Sequence[int],
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
) -> WindowGrid:
    """The sliding-window grid of MONAI's ``sliding_window_inference``.

    Along each axis the step is ``int(roi * (1 - overlap))`` (at least 1; the whole axis when
    the window covers it), and the last window is shifted back to end at the border.

    Args:
        image_size: spatial size of the volume.
        roi_size: window size, one int for every axis or one per axis; a non-positive entry
            takes the image size along that axis.
        overlap: overlap fraction in ``[0, 1)``, one for every axis or one per axis.

    Returns:
        The :class:`WindowGrid`.

    Raises:
        ValueError: sizes or overlaps out of range or of the wrong length.

    Example:
        >>> g = window_grid((12, 10), 8, overlap=0.5)
        >>> g.scan_interval, [(s[0].start, s[1].start) for s in g.windows]
        ((4, 4), [(0, 0), (0, 2), (4, 0), (4, 2)])
    """
    image = tuple(int(s) for s in image_size)
    nd = len(image)
    if nd == 0 or any(s < 1 for s in image):
        raise ValueError(f"image_size must be positive sizes, got {tuple(image_size)}")
    roi_f = _per_axis("roi_size", roi_size, nd)
    if any(r != int(r) for r in roi_f):
        raise ValueError(f"roi_size must be integers, got {roi_size!r}")
    roi = tuple(int(r) if r > 0 else s for r, s in zip(roi_f, image, strict=True))
    ov = _per_axis("overlap", overlap, nd)
    if any(not 0.0 <= o < 1.0 for o in ov):
        raise ValueError(f"overlap must be in [0, 1) along every axis, got {overlap!r}")
    padded = tuple(max(s, r) for s, r in zip(image, roi, strict=True))
    pad = tuple(
        ((r - s) // 2, (r - s) - (r - s) // 2) if r > s else (0, 0)
        for s, r in zip(image, roi, strict=True)
    )
    interval = tuple(
        r if r == p else max(int(r * (1 - o)), 1) for r, p, o in zip(roi, padded, ov, strict=True)
    )
    starts = []
    for p, r, step in zip(padded, roi, interval, strict=True):
        n = next((d for d in range(math.ceil(p / step)) if d * step + r >= p), 0) + 1
        starts.append([d * step - max(d * step + r - p, 0) for d in range(n)])
    grid = torch.cartesian_prod(*(torch.tensor(s) for s in starts)).reshape(-1, nd).tolist()
    windows = tuple(tuple(slice(a, a + r) for a, r in zip(row, roi, strict=True)) for row in grid)
    return WindowGrid(image, roi, padded, pad, interval, windows)


def importance_map(
    roi_size: Sequence[int],
    mode: BlendMode = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Window weights as MONAI's ``compute_importance_map`` makes them (in float32, then cast).

    .. math:: w(p) = \\max\\Big(\\prod_a \\exp\\big(-\\tfrac{(p_a - c_a)^2}{2 (s_a r_a)^2}\\big),
        \\ \\max(\\min w, 10^{-3})\\Big)

    for ``mode="gaussian"`` (``r`` the window size, ``s`` the sigma scale, ``c`` the centre);
    ones for ``mode="constant"``.
    """
    roi = tuple(int(r) for r in roi_size)
    if mode == "constant":
        w = torch.ones(roi, dtype=torch.float32)
    elif mode == "gaussian":
        scales = _per_axis("sigma_scale", sigma_scale, len(roi))
        if any(s <= 0 for s in scales):
            raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
        w = torch.ones((), dtype=torch.float32)
        for i, (r, s) in enumerate(zip(roi, scales, strict=True)):
            t = torch.arange(-(r - 1) / 2.0, (r - 1) / 2.0 + 1, dtype=torch.float32)
            t = torch.exp(t**2 / (-2 * (r * s) ** 2))
            w = w.unsqueeze(-1) * t[(None,) * i] if i > 0 else t
    else:
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    floor = max(float(w.min()), 1e-3)
    return w.clamp(min=floor).to(dtype=dtype, device=device)


class SlidingWindowOperator(LinearOperator):
    """A[x] of a volume under sliding-window inference (see the module docstring).

    Built by :func:`sliding_window_operator`; ``matmat`` maps ``(b, C, *spatial)`` to
    ``(b, C_out, *spatial)``, ``rmatmat`` the reverse.

    Attributes:
        output: the stitched ``F(x)``, ``(C_out, *spatial)``, as MONAI's inferer returns it.
        grid: the :class:`WindowGrid`.
        weights: the window importance map, ``roi_size``.
        n_windows: number of windows; ``n_zero_windows`` of them are all zero.
        window_ops: one batched operator per group of up to ``sw_batch_size`` windows (empty
            when streaming).
        stream: whether window groups are recorded again in every product instead of kept.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        grid: WindowGrid,
        weights: Tensor,
        sw_batch_size: int,
        padding_mode: PaddingMode,
        method: Method,
        graph: fx.GraphModule | None = None,
        stream: bool = False,
    ) -> None:
        super().__init__(tuple(x.shape), tuple(x.shape), batch=None, dtype=x.dtype, device=x.device)
        self.grid, self.weights, self.padding_mode = grid, weights, padding_mode
        self.n_windows = len(grid.windows)
        self.stream = stream
        self._model, self._method, self._graph = model, method, graph
        self._xp = xp = self._pad(x.unsqueeze(0))[0]
        self._live = [i for i, w in enumerate(grid.windows) if bool(xp[(slice(None), *w)].any())]
        self.n_zero_windows = self.n_windows - len(self._live)
        groups = [
            self._live[i : i + sw_batch_size] for i in range(0, len(self._live), sw_batch_size)
        ]
        self._groups = groups
        self.window_ops: list[LinearOperator] = []
        outs: list[Tensor] = []
        for g in groups:  # streaming: each recording is dropped once its output is taken
            op = linearize_batch(model, self._patches(g), method, graph=graph)
            if op.output is not None:
                outs.append(op.output)
            if not stream:
                self.window_ops.append(op)
            del op
        if self.n_zero_windows:  # all-zero windows: A = 0 there, but F(0) may not be 0
            with torch.no_grad(), eval_mode(model):
                f0 = model(xp.new_zeros(1, xp.shape[0], *grid.roi_size))
            alive = set(self._live)
            dead = [i for i in range(self.n_windows) if i not in alive]
            groups = [*groups, dead]
            outs.append(f0.expand(len(dead), *f0.shape[1:]))
        shape = tuple(outs[0].shape[1:])
        if shape[1:] != grid.roi_size:
            raise ValueError(
                f"model must keep the window's spatial size {grid.roi_size} "
                f"(a segmentation network), got outputs of shape {shape}"
            )
        self.out_shape = (shape[0], *grid.image_size)
        norm = torch.zeros(1, *grid.padded_size, dtype=x.dtype, device=x.device)
        for w in grid.windows:
            norm[(slice(None), *w)] += weights
        self._norm = norm
        stitched = self._stitch(groups, [o.unsqueeze(1) for o in outs], shape[0])
        self.output = stitched[0]

    # -- the windows -------------------------------------------------------------------------
    def _patches(self, group: list[int]) -> Tensor:
        """``(len(group), C, *roi)``: the windows of the padded volume."""
        return torch.stack([self._xp[(slice(None), *self.grid.windows[i])] for i in group])

    def _window_op(self, j: int) -> LinearOperator:
        """The batched operator of window group ``j``: kept, or recorded now when streaming."""
        if not self.stream:
            return self.window_ops[j]
        with warnings.catch_warnings():  # a fallback warning was already given at construction
            warnings.simplefilter("ignore")
            return linearize_batch(
                self._model, self._patches(self._groups[j]), self._method, graph=self._graph
            )

    # -- linear pieces -----------------------------------------------------------------------
    def _pad(self, T: Tensor) -> Tensor:
        """Π: ``(b, C, *image) -> (b, C, *padded)``."""
        flat = [p for before_after in reversed(self.grid.pad) for p in before_after]
        if not any(flat):
            return T
        return F.pad(T, flat, mode=self.padding_mode)

    def _pad_adjoint(self, T: Tensor) -> Tensor:
        """Πᵀ: a crop for zero padding, the vjp of ``F.pad`` (linear) for the other modes."""
        if not any(p for ba in self.grid.pad for p in ba):
            return T
        if self.padding_mode == "constant":
            return T[self._crop()]
        from torch.func import vjp

        shape = (T.shape[0], T.shape[1], *self.grid.image_size)
        pull = vjp(self._pad, T.new_zeros(shape))[1]  # F.pad is linear: its vjp is Πᵀ
        return pull(T)[0]

    def _crop(self) -> tuple[slice, ...]:
        return (
            slice(None),
            slice(None),
            *(
                slice(a, a + s)
                for (a, _), s in zip(self.grid.pad, self.grid.image_size, strict=True)
            ),
        )

    def _stitch(self, groups: list[list[int]], outs: list[Tensor], channels: int) -> Tensor:
        """C D⁻¹ Σ_i P_iᵀ W: window outputs ``(n, b, C_out, *roi)`` per group to the volume."""
        b = outs[0].shape[1]
        vol = outs[0].new_zeros(b, channels, *self.grid.padded_size)
        for group, out in zip(groups, outs, strict=True):
            for i, o in zip(group, out, strict=True):
                vol[(slice(None), slice(None), *self.grid.windows[i])] += o * self.weights
        return (vol / self._norm)[self._crop()]

    # -- the operator ------------------------------------------------------------------------
    def _matmat(self, Y: Tensor) -> Tensor:
        if not self._groups:
            return Y.new_zeros(1, Y.shape[1], *self.out_shape)
        Yp = self._pad(Y[0])
        vol = Y.new_zeros(Y.shape[1], self.out_shape[0], *self.grid.padded_size)
        for j, group in enumerate(self._groups):  # stitched group by group, in window order
            op = self._window_op(j)
            P = torch.stack([Yp[(slice(None), slice(None), *self.grid.windows[i])] for i in group])
            for i, o in zip(group, op.matmat(P), strict=True):
                vol[(slice(None), slice(None), *self.grid.windows[i])] += o * self.weights
            del op, P
        return (vol / self._norm)[self._crop()].unsqueeze(0)

    def _rmatmat(self, Z: Tensor) -> Tensor:
        vol = Z.new_zeros(Z.shape[1], self.out_shape[0], *self.grid.padded_size)
        vol[self._crop()] = Z[0]
        vol = vol / self._norm
        grad = Z.new_zeros(Z.shape[1], self.in_shape[0], *self.grid.padded_size)
        for j, group in enumerate(self._groups):
            op = self._window_op(j)
            Q = (
                torch.stack([vol[(slice(None), slice(None), *self.grid.windows[i])] for i in group])
                * self.weights
            )
            for i, g in zip(group, op.rmatmat(Q), strict=True):
                grad[(slice(None), slice(None), *self.grid.windows[i])] += g
            del op, Q
        return self._pad_adjoint(grad).unsqueeze(0)


def sliding_window_operator(
    model: nn.Module,
    x: Tensor,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    mode: BlendMode = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
    sw_batch_size: int = 4,
    padding_mode: PaddingMode = "constant",
    method: Method = "auto",
    graph: fx.GraphModule | None = None,
    stream: bool = False,
) -> SlidingWindowOperator:
    """A[x] of a whole volume under MONAI-style sliding-window inference.

    ``op.output`` equals ``monai.inferers.sliding_window_inference(x[None], roi_size,
    sw_batch_size, model, overlap, mode, sigma_scale, padding_mode)[0]`` and
    ``op.matmat(x[None])[0]`` equals it too for a bias-free network. Windows that are all zero
    (background, padding) are not linearised: their block of A is zero, which is what the
    convention ReLU'(0) = 0 gives when every path through the network passes a ReLU.

    Args:
        model: a segmentation network whose output keeps the window's spatial size.
        x: one volume ``(C, *spatial)`` (any number of spatial axes; 2-D and 3-D are usual).
        roi_size: window size; an int for every axis or one per axis, non-positive entries
            meaning the whole axis.
        overlap: overlap fraction of neighbouring windows, in ``[0, 1)``.
        mode: window blending, ``"constant"`` or ``"gaussian"``.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        sw_batch_size: windows linearised together; each network pass carries
            ``sw_batch_size * b`` vectors, so this trades memory for fewer passes.
        padding_mode: how volumes smaller than the window are padded (``F.pad`` modes; the
            fill value is 0, which keeps the map linear).
        method: how to linearise each window, see :func:`~rprselect.linearize`.
        graph: the model traced once (:func:`~rprselect.linearize.prepare_graph`), reused by
            every window group instead of tracing again.
        stream: record each window group again in every product instead of keeping all the
            recordings (memory of ``sw_batch_size`` windows instead of all of them, for about
            twice the network time; see the module docstring).

    Returns:
        A :class:`SlidingWindowOperator` (unbatched; use it with :func:`~rprselect.svd`).

    Raises:
        TypeError: model or x of the wrong type.
        ValueError: bad sizes or options, or a model that changes the spatial size.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU()).double()
        >>> x = torch.rand(1, 12, 10, dtype=torch.float64)
        >>> op = sliding_window_operator(net, x, roi_size=8)
        >>> op.out_shape, op.n_windows
        ((2, 12, 10), 4)
        >>> bool(torch.allclose(op.matvec(x), op.output))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}"
        )
    if x.dim() < 2:
        raise ValueError(
            f"x must have shape (C, *spatial) without a batch dimension, got {tuple(x.shape)}"
        )
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be an int >= 1, got {sw_batch_size!r}")
    if not isinstance(stream, bool):
        raise TypeError(f"stream must be a bool, got {type(stream).__name__} {stream!r}")
    if padding_mode not in _PAD_MODES:
        raise ValueError(f"padding_mode must be one of {_PAD_MODES}, got {padding_mode!r}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite, got NaN or Inf")
    if not (x != 0).any():
        raise ValueError("x must not be all zeros (RPR is undefined)")
    grid = window_grid(tuple(x.shape[1:]), roi_size, overlap)
    weights = importance_map(grid.roi_size, mode, sigma_scale, dtype=x.dtype, device=x.device)
    return SlidingWindowOperator(
        model, x, grid, weights, sw_batch_size, padding_mode, method, graph, stream
    )
