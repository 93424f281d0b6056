"""Dense oracles for the core tests: A[x] by ``torch.func.jacrev``, its SVD by LAPACK, and a
comparison helper whose failure message says which entries differ (after curvlinops'
``test/utils.py``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "Oracle",
    "oracle_for",
    "jacobian",
    "assert_close",
    "projection_ratios",
]


def jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """The ``(m, n)`` float64 Jacobian of ``v -> model(v[None])[0]`` at x, by reverse mode."""
    from torch.func import jacrev

    model.eval()
    with warnings.catch_warnings():  # functorch's "no batching rule" performance notes
        warnings.simplefilter("ignore", UserWarning)
        J = jacrev(lambda v: model(v[None])[0])(x)
    n = x.numel()
    return J.detach().reshape(-1, n).double()


@dataclass(frozen=True)
class Oracle:
    """A[x] of one zoo case, materialised, with its full SVD (``J = U diag(S) Vh``)."""

    model: nn.Module
    x: Tensor
    J: Tensor
    U: Tensor
    S: Tensor
    Vh: Tensor
    output: Tensor

    @property
    def rank(self) -> int:
        """Numerical rank: singular values above ``1e-10 * s_1``."""
        return int((self.S > 1e-10 * self.S[0]).sum())

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape)


@functools.cache
def oracle_for(name: str) -> Oracle:
    """The oracle of the zoo case ``name`` (built once per test session)."""
    from zoo import case_by_name

    model, x = case_by_name(name).build()
    with torch.no_grad():
        output = model(x[None])[0]
    J = jacobian(model, x)
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return Oracle(model, x, J, U, S, Vh, output)


def projection_ratios(vectors: Tensor, v: Tensor) -> Tensor:
    """``|P_r v|^2 / |v|^2`` for r = 1..k, with P_r the projector on the first r rows of
    ``vectors`` (``(k, N)``, orthonormal). The independent twin of ``rprselect.rpr``/``lpr``."""
    c = vectors.double() @ v.double().reshape(-1)
    return c.pow(2).cumsum(0) / v.double().pow(2).sum()


def assert_close(
    actual: Tensor, expected: Tensor, *, rtol: float, atol: float = 0.0, name: str = "tensor"
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    On failure the message reports how many entries differ, the largest absolute and relative
    differences and the index of the worst entry with both values there.
    """
    a = torch.as_tensor(actual).detach().double().cpu()
    e = torch.as_tensor(expected).detach().double().cpu()
    assert a.shape == e.shape, f"{name}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = ~(diff <= bound)  # also catches NaN
    if not bool(bad.any()):
        return
    worst = int(torch.where(bad, diff - bound, torch.zeros_like(diff)).argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    rel = (diff / e.abs().clamp_min(torch.finfo(torch.float64).tiny)).max()
    raise AssertionError(
        f"{name}: {int(bad.sum())} of {a.numel()} entries differ "
        f"(rtol={rtol:g}, atol={atol:g}); max abs diff {float(diff.max()):.3e}, "
        f"max rel diff {float(rel):.3e}; worst at index {idx}: "
        f"actual {float(a[idx]):.17g}, expected {float(e[idx]):.17g}"
    )
