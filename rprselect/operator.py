"""The A[x] linear-operator contract.

An operator maps blocks of vectors. Subclasses implement two private kernels on a *batched*
layout, ``_matmat(Y)`` with Y of shape ``(B, b, *in_shape)`` and ``_rmatmat(Z)`` with Z of shape
``(B, b, *out_shape)``: ``B`` independent samples (each with its own matrix A[x_i]) and ``b``
vectors per sample (the shape of curvlinops' ``_matmat``/``_adjoint``). Every caller, the solvers
included, goes through the public :meth:`LinearOperator.apply`, which checks shapes and counts
products and passes. The base class also owns the unbatched view, ``to_scipy()`` and the
dot-product test.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["LinearOperator", "check_adjoint"]

Shape = tuple[int, ...]


class LinearOperator:
    """A block of matrices ``A[x_1], ..., A[x_B]`` given only by their products.

    Args:
        in_shape: per-sample input shape, e.g. ``(C, H, W)``.
        out_shape: per-sample output shape.
        batch: number of samples ``B``, or ``None`` for a single unbatched operator, whose
            ``matmat`` takes ``(b, *in_shape)`` instead of ``(B, b, *in_shape)``.
        dtype: dtype of the products.
        device: device of the products.

    Attributes:
        output: ``F(x)`` at the linearisation point(s), ``(B, *out_shape)`` when batched,
            ``out_shape`` when not; ``None`` for an operator that is not a model's.
        n_products: single-vector products so far (``A y`` or ``A^T z``, per sample).
        n_passes: batched passes through the network so far.
    """

    output: Tensor | None = None

    def __init__(
        self,
        in_shape: Shape,
        out_shape: Shape,
        *,
        batch: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.batch = batch
        self.dtype = dtype
        self.device = torch.device(device)
        self.n_products = 0
        self.n_passes = 0

    # -- what subclasses implement -----------------------------------------------------------
    def _matmat(self, Y: Tensor) -> Tensor:
        raise NotImplementedError

    def _rmatmat(self, Z: Tensor) -> Tensor:
        raise NotImplementedError

    # -- public contract ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: the matrix size of one sample's A[x]."""
        return math.prod(self.out_shape), math.prod(self.in_shape)

    @property
    def n_samples(self) -> int:
        return 1 if self.batch is None else self.batch

    def apply(self, block: Tensor, *, adjoint: bool = False) -> Tensor:
        """``A`` (or ``A^T``) on a block in the batched layout, counting the work.

        This is the one entry point of the solvers: ``(B, b, *in_shape) -> (B, b, *out_shape)``
        (``(B, b, *out_shape) -> (B, b, *in_shape)`` with ``adjoint=True``), where ``B`` is
        :attr:`n_samples` (1 for an unbatched operator). One call is one network pass carrying
        ``B * b`` vectors: ``n_passes`` grows by one and ``n_products`` by ``B * b``.

        Raises:
            TypeError: ``block`` is not a tensor.
            ValueError: ``block`` has the wrong shape.
        """
        shape = self.out_shape if adjoint else self.in_shape
        name = "Z" if adjoint else "Y"
        if not isinstance(block, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(block).__name__}")
        B = self.n_samples
        if block.dim() != 2 + len(shape) or tuple(block.shape[2:]) != shape or block.shape[0] != B:
            dims = ", ".join(map(str, shape))
            raise ValueError(f"{name} must have shape ({B}, b, {dims}), got {tuple(block.shape)}")
        block = block.to(device=self.device, dtype=self.dtype)
        out = self._rmatmat(block) if adjoint else self._matmat(block)
        self.n_products += block.shape[0] * block.shape[1]
        self.n_passes += 1
        return out

    def matmat(self, Y: Tensor) -> Tensor:
        """``A Y``: ``(b, *in_shape) -> (b, *out_shape)``, with a leading ``B`` when batched."""
        out = self.apply(self._as_batched(Y, self.in_shape, "Y"))
        return out if self.batch is not None else out[0]

    def rmatmat(self, Z: Tensor) -> Tensor:
        """``A^T Z``: ``(b, *out_shape) -> (b, *in_shape)``, with a leading ``B`` when batched."""
        out = self.apply(self._as_batched(Z, self.out_shape, "Z"), adjoint=True)
        return out if self.batch is not None else out[0]

    def unbatched(self) -> LinearOperator:
        """The single sample of a one-sample batched operator as an unbatched operator.

        The view shares this operator's kernels (no new trace or recording); ``matmat`` then
        takes ``(b, *in_shape)`` and ``output`` loses its leading dimension. Counters start
        at zero on the view.

        Raises:
            ValueError: the operator holds more (or fewer) than one sample.
        """
        if self.batch is None:
            return self
        if self.batch != 1:
            raise ValueError(f"unbatched() needs a one-sample operator, got batch={self.batch}")
        return _UnbatchedView(self)

    def matvec(self, y: Tensor) -> Tensor:
        """``A y`` for one vector of shape ``in_shape`` (unbatched operators only)."""
        return self.matmat(y.unsqueeze(0))[0]

    def rmatvec(self, z: Tensor) -> Tensor:
        """``A^T z`` for one vector of shape ``out_shape`` (unbatched operators only)."""
        return self.rmatmat(z.unsqueeze(0))[0]

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` on flat float64 numpy vectors.

        Raises:
            ImportError: when scipy is missing.
            ValueError: for a batched operator (scipy has one matrix per operator).
        """
        if self.batch is not None:
            raise ValueError(f"to_scipy() needs an unbatched operator, got batch={self.batch}")
        try:
            from scipy.sparse.linalg import LinearOperator as ScipyOperator
        except ImportError as err:  # pragma: no cover - scipy ships with the extras
            raise ImportError("to_scipy() needs scipy: pip install 'rprselect[extras]'") from err
        import numpy as np

        m, n = self.shape

        def mat(v: Any) -> Any:
            y = torch.as_tensor(np.asarray(v).T.reshape(-1, *self.in_shape))
            out = self.matmat(y.to(self.device, self.dtype)).reshape(-1, m).T  # (m, b)
            return out.detach().cpu().double().numpy()

        def rmat(v: Any) -> Any:
            z = torch.as_tensor(np.asarray(v).T.reshape(-1, *self.out_shape))
            out = self.rmatmat(z.to(self.device, self.dtype)).reshape(-1, n).T  # (n, b)
            return out.detach().cpu().double().numpy()

        return ScipyOperator(
            shape=(m, n),
            matvec=lambda v: mat(np.asarray(v).reshape(n, 1)).ravel(),
            rmatvec=lambda v: rmat(np.asarray(v).reshape(m, 1)).ravel(),
            matmat=mat,
            rmatmat=rmat,
            dtype=np.float64,
        )

    def dense(self) -> Tensor:
        """Materialise A[x] from its smaller side: ``(m, n)``, or ``(B, m, n)`` when batched.

        Costs ``min(m, n)`` products per sample in one pass.
        """
        m, n = self.shape
        B = self.n_samples
        if m <= n:
            eye = torch.eye(m, dtype=self.dtype, device=self.device)
            Z = eye.reshape(m, *self.out_shape).expand(B, m, *self.out_shape)
            A = self.apply(Z.contiguous(), adjoint=True).reshape(B, m, n)
        else:
            eye = torch.eye(n, dtype=self.dtype, device=self.device)
            Y = eye.reshape(n, *self.in_shape).expand(B, n, *self.in_shape)
            A = self.apply(Y.contiguous()).reshape(B, n, m).transpose(1, 2)
        return A if self.batch is not None else A[0]

    def __repr__(self) -> str:
        batch = "" if self.batch is None else f", batch={self.batch}"
        return (
            f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape}"
            f"{batch}, dtype={self.dtype})"
        )

    # -- internals ---------------------------------------------------------------------------
    def _as_batched(self, T: Tensor, shape: Shape, name: str) -> Tensor:
        if not isinstance(T, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(T).__name__}")
        lead = 1 if self.batch is None else 2
        if T.dim() != lead + len(shape) or tuple(T.shape[lead:]) != shape:
            expect = ("" if self.batch is None else f"{self.batch}, ") + "b, " + str(shape)[1:-1]
            raise ValueError(f"{name} must have shape ({expect}), got {tuple(T.shape)}")
        if self.batch is not None and T.shape[0] != self.batch:
            raise ValueError(f"{name} must have {self.batch} samples first, got {T.shape[0]}")
        return T if self.batch is not None else T.unsqueeze(0)


class _UnbatchedView(LinearOperator):
    """One sample of a batched operator, unbatched (see :meth:`LinearOperator.unbatched`)."""

    def __init__(self, base: LinearOperator) -> None:
        super().__init__(
            base.in_shape, base.out_shape, batch=None, dtype=base.dtype, device=base.device
        )
        self.base = base
        self.output = None if base.output is None else base.output[0]
        self.method = getattr(base, "method", None)

    def __getattr__(self, name: str) -> Any:  # what the base adds, e.g. adjoint_network
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def _matmat(self, Y: Tensor) -> Tensor:
        return self.base._matmat(Y)

    def _rmatmat(self, Z: Tensor) -> Tensor:
        return self.base._rmatmat(Z)


def check_adjoint(op: LinearOperator, n_trials: int = 3, seed: int = 0) -> float:
    """The dot-product test of an operator and its adjoint.

    .. math::
        \\max_{\\text{trials}} \\frac{|\\langle Ay, z\\rangle - \\langle y, A^T z\\rangle|}
        {\\|Ay\\|\\,\\|z\\|}

    with random Gaussian ``y`` and ``z``. It is about machine epsilon of ``op.dtype`` when
    ``rmatmat`` is the exact adjoint of ``matmat``.

    Args:
        op: the operator to test.
        n_trials: number of random ``(y, z)`` pairs, sent through as one block.
        seed: seed of the random vectors.

    Returns:
        The largest relative discrepancy over the trials.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    g = torch.Generator().manual_seed(seed)
    lead = (n_trials,) if op.batch is None else (op.batch, n_trials)
    y = torch.randn(*lead, *op.in_shape, generator=g, dtype=torch.float64)
    z = torch.randn(*lead, *op.out_shape, generator=g, dtype=torch.float64)
    Ay = op.matmat(y.to(op.dtype)).double()
    ATz = op.rmatmat(z.to(op.dtype)).double()
    dims = tuple(range(len(lead), Ay.dim()))
    lhs = (Ay * z).sum(dims)
    rhs = (y * ATz).sum(tuple(range(len(lead), y.dim())))
    scale = Ay.flatten(len(lead)).norm(dim=-1) * z.flatten(len(lead)).norm(dim=-1)
    return float(((lhs - rhs).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny)).max())
