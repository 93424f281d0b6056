"""Ranking mode: stop Lanczos once every sample's RPR(x; k) is certified to within δ.

A ranking of a pool needs RPR(x; k) = |Π x|² / |x|², with Π the projector onto the top-k right
singular subspace of A[x], to a known accuracy, not every triplet to a residual of 1e-4.
:class:`RankStop` is a stopping rule for :func:`~rprselect.solvers.lanczos.lanczos_svd`
(``stop=``) that brackets the true RPR after every step from quantities the iteration already
has (Ritz values, residuals, the Ritz coefficients of x), without a product.

**Setting.** A step has Ritz triplets ``(σ̃_i, u_i, v_i)``, ``i = 1..r``, descending, with
orthonormal ``u``'s and ``v``'s and absolute residuals ``R_i = |(A v_i − σ̃_i u_i,
Aᵀu_i − σ̃_i v_i)|``. While no triplet is locked, ``A v_i = σ̃_i u_i`` holds exactly and
``Aᵀu_i − σ̃_i v_i = P f_i`` (the pending block ``P ⟂ V``), so (i) the σ̃_i are singular values
of ``UᵀAV`` and, by Cauchy interlacing, ``σ̃_i ≤ σ_i``; (ii) for ``M = AᵀA``,
``M v_i = σ̃_i² v_i + σ̃_i P f_i``.

**Step 1, an upper bound ω of σ_{k+1}** (this is where the assumption enters). In the
Jordan–Wielandt matrix ``H = [[0, A], [Aᵀ, 0]]`` (eigenvalues ±σ_j and zeros) the unit vector
``z = (u_{k+1}, v_{k+1})/√2`` has Rayleigh quotient σ̃_{k+1} and residual ``R_{k+1}/√2``, so some
singular value lies within ``R_{k+1}`` of σ̃_{k+1} (Kahan; Krylov–Bogoliubov).

*Assumption (A)*: that singular value is σ_{k+1}, i.e. ``ω = σ̃_{k+1} + R_{k+1} ≥ σ_{k+1}``: the
Krylov space has not missed a singular value above Ritz value k + 1. Every Krylov stopping
test, SLEPc's included, rests on an assumption of this kind; with a random start it fails with
probability zero in exact arithmetic, but in floating point and early on it can fail: on the
test network (``tests/test_ranking.py``), at step 11 of 22, Ritz value 3 approximated σ_4 while
σ_3 (in a cluster 0.0255/0.0254/0.0243) had not yet been found, and the interval of sample 0 held a
half-width 0.026 that did not contain the true RPR (the previous, wider interval: 0.17).
:class:`RankStop` therefore stops only when the certificate has held at two consecutive steps
(a safeguard that can only delay a stop; on that network (A) held again at the next step).

*Tried and rejected*: a Kato–Temple chain (``σ_j ≤ σ̃_j + ε_j²/(σ̃_j − ω_{j+1})``, from the
bottom of the tail upwards) makes ω quadratic in the residuals, but needs (A) for every tail
Ritz value, and the bottom ones of a small Krylov space do not approximate σ_r: on the test
network (A) failed there in early steps, and on the trained 32³ pool it moved the first step
with ``σ̃_k > ω`` by nothing (median 57 % of the tol-1e-4 products either way).

**Step 2, the angles.** Let ``W⊥`` span the true right singular vectors after the k-th, so
``|W⊥ᵀ V_k|₂ = ‖sin Θ‖₂ = s`` for the principal angles between span(V_k) and the true top-k
subspace. Wedin's theorem (Wedin 1972; Stewart & Sun, *Matrix Perturbation Theory*,
Thm. V.4.4) gives ``s ≤ ρ / (σ̃_k − ω)`` with ``ρ`` the spectral norm of the top-k residual block,
when ``σ̃_k > ω``. Per column, as in the proof of the
Davis–Kahan sin θ theorem: with ``r_i = M v_i − σ̃_i² v_i`` (any vector), the symmetry of M gives
``(Λ₂ − σ̃_i²) W⊥ᵀv_i = W⊥ᵀ r_i`` with ``Λ₂ ≤ σ_{k+1}² ≤ ω²``, so

.. math::
    |W_\\perp^T v_i| \\le \\tau_i
    = \\frac{|r_i|}{\\tilde\\sigma_i^2 - \\omega^2},
    \\qquad s \\le \\|\\tau\\|_2 \\;(\\|\\cdot\\|_2 \\le \\|\\cdot\\|_F).

While nothing is locked, (ii) gives ``|r_i| = σ̃_i |f_i| ≤ σ̃_i R_i``. With ``L`` locked triplets,
write ``A v_i = σ̃_i u_i + e_i`` and ``Aᵀu_i = σ̃_i v_i + g_i`` (``|e_i|² + |g_i|² = R_i²``). Then
``r_i = σ̃_i g_i + Aᵀe_i``; ``e_i`` lies in span(U_L) (``A V ⊂ span U`` and ``U_Aᵀ A V_L = 0``),
``Aᵀ U_L = V_L Σ_L + G_L`` gives ``|Aᵀ U_L|₂ ≤ κ = max σ_L + ρ_L`` with
``ρ_L = (Σ_locked R_j²)^{1/2} ≥ |G_L|₂``, and ``|e_i| ≤ ρ_L`` (for unlocked i,
``e_i = U_L G_Lᵀ v_i``; for locked i, ``R_i ≤ ρ_L``). Hence ``|r_i| ≤ σ̃_i R_i + κ min(R_i, ρ_L)``.
Well-converged leading triplets get small τ_i even when the k-th has not converged.

**Step 3, the interval.** Split ``x = a + b``, ``a = V_k c`` (``c = V_kᵀx``), ``b ⟂ V_k``. Then
``|x|² RPR = |x|² − |W⊥ᵀx|²`` and ``|x|² c̃ = |x|² − |b|²``, so
``|x|² (RPR − c̃) = |b|² − |W⊥ᵀx|²``. With ``η = min(Σ_i |c_i| τ_i, s |a|) ≥ |W⊥ᵀ a|``
and ``|W⊥ᵀ b|² = |b|² − |Π b|² ≥ (1 − s²)|b|²``:

.. math::
    \\sqrt{1 - s^2}\\,|b| - \\eta \\;\\le\\; |W_\\perp^T x| \\;\\le\\; |b| + \\eta,
    \\qquad
    -\\frac{2|b|\\eta + \\eta^2}{|x|^2} \\le \\mathrm{RPR}(x;k) - \\tilde c \\le
    \\frac{|b|^2 - (\\sqrt{1-s^2}|b| - \\eta)_+^2}{|x|^2}.

With ``η = s|a|`` this is never wider than ``s² + 2s√(c̃(1 − c̃))`` (the previous bound); the
weights ``|c_i|`` make it x-specific: a poorly converged k-th triplet costs little when x has a
small coefficient on it. While ``σ̃_k ≤ ω`` the interval is ``[0, 1]``.

**Locked triplets** enter only through ``|r_i|`` above; Wedin's theorem, Kahan's interval
(the Rayleigh quotient of ``z`` is still σ̃_{k+1}: ``e ∈ span(U_L) ⟂ u`` for an unlocked triplet)
and step 3 hold for two-sided residuals as they are.

The products run in the network's dtype; rounding of order ``eps |A|`` per product is outside
these bounds (the top-k residuals carry it in quadrature, see ``LanczosState.estimates``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lanczos import LanczosState

__all__ = ["RankStop", "rpr_interval", "sigma_next_bound"]


def _residuals(state: LanczosState) -> Tensor:
    """``(B, r)`` absolute residuals: the top-k from the relative estimates (which carry the
    rounding floor in quadrature, so they are upper bounds), then the tail's."""
    return torch.cat([state.estimates * state.values, state.tail_residuals], -1)


def _gram_residuals(state: LanczosState) -> Tensor:
    """``(B, k)`` upper bounds of ``|AᵀA v_i − σ̃_i² v_i|`` (step 2 of the module docstring):
    ``σ̃_i R_i + κ min(R_i, ρ_L)``, with ``κ = 0`` while nothing is locked."""
    vals = state.values
    k = vals.shape[-1]
    R = _residuals(state)
    out = vals * R[:, :k]
    locked = state.locked_mask  # (B, r)
    if locked is None:
        return out
    rho_l = (R.pow(2) * locked).sum(-1).sqrt()
    S = torch.cat([vals, state.tail_values], -1)
    kappa = (S * locked).amax(-1) + rho_l
    return out + kappa.unsqueeze(-1) * torch.minimum(R[:, :k], rho_l.unsqueeze(-1))


def sigma_next_bound(state: LanczosState) -> Tensor:
    """ω = σ̃_{k+1} + R_{k+1} ≥ σ_{k+1}(A) under assumption (A) of the module docstring,
    ``(B,)`` float64 (``inf`` when the projected matrix has only k Ritz values)."""
    return state.next_value + state.next_residual


def rpr_interval(state: LanczosState, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Certified bounds of RPR(x; k) at a Lanczos step (see the module docstring).

    Args:
        state: the step's :class:`~rprselect.solvers.lanczos.LanczosState`.
        x: ``(B, n)`` the linearisation points, flattened.

    Returns:
        ``(rpr, lower, upper)``, each ``(B,)`` float64: the Ritz estimate ``|V_kᵀx|²/|x|²`` and
        the interval that holds the true RPR(x; k) under assumption (A).
    """
    x = x.double()
    x2 = x.pow(2).sum(-1).clamp_min(1e-300)
    coef = state.coefficients(x)
    a2 = coef.pow(2).sum(-1).clamp(max=x2)
    c = a2 / x2
    a, b2 = a2.sqrt(), (x2 - a2).clamp_min(0.0)
    b = b2.sqrt()
    vals = state.values
    om = sigma_next_bound(state)
    gap = vals[:, -1] - om
    ok = gap > 0
    s = torch.where(ok, state.residual_norm / gap.clamp_min(1e-300), torch.inf)
    den = (vals.pow(2) - om.unsqueeze(-1).pow(2)).clamp_min(1e-300)
    tau = torch.where(ok.unsqueeze(-1), _gram_residuals(state) / den, torch.inf)
    s = torch.minimum(s, tau.pow(2).sum(-1).sqrt())
    eta = torch.minimum(s * a, (coef.abs() * tau).sum(-1))
    s = s.clamp(max=1.0)
    down = (2 * b * eta + eta.pow(2)) / x2
    up = (b2 - ((1 - s.pow(2)).sqrt() * b - eta).clamp_min(0.0).pow(2)) / x2
    lower = torch.where(ok, c - down, 0.0).clamp(min=0.0)
    upper = torch.where(ok, c + up, 1.0).clamp(max=1.0)
    return c, lower.nan_to_num(0.0), upper.nan_to_num(1.0)


class RankStop:
    """Stop once every sample's RPR(x; k) is certified to within ``delta`` (absolute).

    Pass it as ``lanczos_svd(op, k, tol, config, stop=RankStop(X, delta))``; the solve ends
    when the certified half-width of every sample's interval (:func:`rpr_interval`) has been at
    most ``delta`` at two consecutive steps (see assumption (A)), or at ``tol`` as usual,
    whichever comes first. After the solve, :attr:`rpr`,
    :attr:`lower` and :attr:`upper` hold the last step's estimate and interval, and
    :attr:`certified_at` the products at which each sample alone would have stopped.

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
        self._held = False  # every sample's certificate held at the previous step
        self._prev = torch.zeros(X.shape[0], dtype=torch.bool)
        #: ``(B,)`` products at which each sample's own certificate had held at two consecutive
        #: steps (``-1``: never); in a lockstep batch the slowest sample decides the stop
        self.certified_at = torch.full((X.shape[0],), -1, dtype=torch.int64)

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
        now = (half <= self.delta).cpu()
        first = now & self._prev & (self.certified_at < 0)
        self.certified_at[first] = state.n_products
        self._prev = now
        held, self._held = self._held, bool(now.all())
        return held and self._held
