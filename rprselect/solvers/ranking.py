"""Ranking mode: stop Lanczos once every sample's RPR(x; k) is certified to within δ.

A ranking of a pool needs RPR(x; k) = |P x|² / |x|², with P the projector onto the top-k right
singular subspace of A[x], to a known accuracy, not every triplet to a residual of 1e-4.
:class:`RankStop` is a stopping rule for :func:`~rprselect.solvers.lanczos.lanczos_svd`
(``stop=``) that brackets the true RPR after every step from quantities the iteration already
has (Ritz values, residuals, the basis), without a product.

**The bound.** Let the step's top-k Ritz triplets be ``(Σ̃, Ũ, Ṽ)`` with orthonormal
``Ũ, Ṽ``. In the Lanczos relation ``A Ṽ = Ũ Σ̃`` holds exactly and
``Aᵀ Ũ − Ṽ Σ̃ = P (E X_k)`` (the pending block), so the residual block has spectral norm
``ρ = |E X_k|₂``. Let ``α ≥ σ_{k+1}(A)`` and ``γ = σ̃_k − α > 0``. Wedin's sin-θ theorem
(Wedin 1972; Stewart & Sun, *Matrix Perturbation Theory*, Thm. V.4.4) gives, for the angle
between span(Ṽ) and the true top-k subspace,

.. math:: s = \\|\\sin\\Theta\\|_2 = \\|P - \\tilde P\\|_2 \\le \\rho / \\gamma.

Splitting ``x = a + b`` with ``a = P̃ x``, ``b = (I − P̃) x``:
``xᵀPx − xᵀP̃x = −aᵀ(I−P)a + 2 aᵀ P b + bᵀ P b``, and each term is bounded by ``s``
(``|(I−P)P̃|₂ = |P(I−P̃)|₂ = s``), so with ``c = RPR̃ = |a|²/|x|²``

.. math:: |\\mathrm{RPR}(x; k) - \\tilde c| \\le s^2 + 2 s \\sqrt{\\tilde c (1 - \\tilde c)}.

**The assumption.** ``α = σ̃_{k+1} + r_{k+1}`` (Ritz value k + 1 plus its absolute residual)
is an upper bound of ``σ_{k+1}(A)`` when the Krylov space has not missed a singular value
above it, i.e. Ritz value k + 1 approximates σ_{k+1} rather than a smaller one (by Kahan's
residual theorem some singular value lies within ``r_{k+1}`` of σ̃_{k+1}). Every Krylov
stopping test, SLEPc's included, rests on the same assumption; with a random start it fails
with probability zero in exact arithmetic. While ``γ <= 0`` the interval is ``[0, 1]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lanczos import LanczosState

__all__ = ["RankStop", "rpr_interval"]


def rpr_interval(state: LanczosState, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Certified bounds of RPR(x; k) at a Lanczos step (see the module docstring).

    Args:
        state: the step's :class:`~rprselect.solvers.lanczos.LanczosState`.
        x: ``(B, n)`` the linearisation points, flattened.

    Returns:
        ``(rpr, lower, upper)``, each ``(B,)`` float64: the Ritz estimate ``|Ṽᵀx|²/|x|²`` and
        the interval that holds the true RPR(x; k) under the stated assumption.
    """
    x = x.double()
    c = state.coefficients(x).pow(2).sum(-1) / x.pow(2).sum(-1).clamp_min(1e-300)
    c = c.clamp(0.0, 1.0)
    alpha = state.next_value + state.next_residual
    gap = state.values[:, -1] - alpha
    s = torch.where(gap > 0, state.residual_norm / gap.clamp_min(1e-300), torch.inf).clamp(max=1)
    half = s.pow(2) + 2 * s * (c * (1 - c)).sqrt()
    return c, (c - half).clamp(min=0.0), (c + half).clamp(max=1.0)


class RankStop:
    """Stop once every sample's RPR(x; k) is certified to within ``delta`` (absolute).

    Pass it as ``lanczos_svd(op, k, tol, config, stop=RankStop(X, delta))``; the solve ends
    when the certified half-width of every sample's interval (:func:`rpr_interval`) is at most
    ``delta``, or at ``tol`` as usual, whichever comes first. After the solve, :attr:`rpr`,
    :attr:`lower` and :attr:`upper` hold the last step's estimate and interval.

    Args:
        X: ``(B, *in_shape)`` the points the operator was linearised at.
        delta: absolute accuracy of RPR(x; k) wanted, in ``(0, 1)``.

    Raises:
        TypeError: ``X`` is not a tensor. ValueError: ``delta`` outside ``(0, 1)``.
    """

    def __init__(self, X: Tensor, delta: float) -> None:
        if not isinstance(X, Tensor):
            raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.x = X.detach().reshape(X.shape[0], -1).double()
        self.delta = float(delta)
        self.rpr = self.lower = self.upper = torch.full((X.shape[0],), float("nan"))
        self.steps = 0

    def __call__(self, state: LanczosState) -> bool:
        x = self.x.to(state.values.device)
        if x.shape[0] != state.values.shape[0]:
            raise ValueError(
                f"X must hold one point per sample of the operator ({state.values.shape[0]}), "
                f"got {x.shape[0]}"
            )
        self.rpr, self.lower, self.upper = rpr_interval(state, x)
        self.steps = state.step
        half = torch.maximum(self.rpr - self.lower, self.upper - self.rpr)
        return bool((half <= self.delta).all())
