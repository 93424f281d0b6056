"""Pool throughput for ``rprselect bench solvers``: RPR scoring against MC-dropout entropy.

Three ways to rank a pool, each timed on the same model and samples:

* :func:`rprselect.scoring.score` at the solver tolerance (``tol=1e-4``);
* the cheap-tolerance mode :func:`settled_lanczos`: ``tol=1e-2`` plus early stopping once
  RPR(x; k) has settled (target P3);
* MC dropout with ``T`` stochastic forward passes and the predictive entropy, the acquisition
  MONAI Label users run today (:func:`mc_dropout_entropy`).

It also times one training epoch of the MNIST CNN (target P2) and makes the synthetic 4-channel
brain volumes of the 3-D cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rprselect.linearize import linearize_batch
from rprselect.operator import LinearOperator
from rprselect.solvers import SolverConfig, SVDResult
from rprselect.solvers.lanczos import (
    _apply,
    _default_ncv,
    _orthonormalize,
    _residuals_from_products,
    _ritz,
)

__all__ = [
    "SettledResult",
    "brain_volumes",
    "mnist_images",
    "p2_scoring",
    "pool_throughput",
    "mc_dropout",
    "mc_dropout_entropy",
    "settled_lanczos",
    "settled_scores",
    "spearman",
    "train_epoch",
]


# -- data ---------------------------------------------------------------------------------------
def brain_volumes(n: int, size: int, channels: int = 4, seed: int = 0) -> Tensor:
    """``(n, channels, size, size, size)`` synthetic skull-stripped brain MRIs, float32.

    Each volume is a phantom of :mod:`rprselect.data.synthetic` (an ellipsoid brain with one or
    two tumour blobs, background exactly 0), one modality per channel, scaled to unit standard
    deviation over the brain.
    """
    from rprselect.data.synthetic import _CONTRAST, _phantom

    mods = list(_CONTRAST)[:channels]
    if len(mods) < channels:
        raise ValueError(f"channels must be at most {len(_CONTRAST)}, got {channels}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, channels, size, size, size), dtype=np.float32)
    for i in range(n):
        volumes, _ = _phantom((size, size, size), mods, rng)
        for c, mod in enumerate(mods):
            v = volumes[mod]
            out[i, c] = v / max(float(v[v > 0].std()), 1e-6)
    return torch.from_numpy(out)


def mnist_images(
    n: int, data_dir: str | None, seed: int, split: str = "train"
) -> tuple[Tensor, Tensor, str]:
    """The first ``n`` MNIST images and labels of ``split``, or random ones without the data."""
    from rprselect.data import load_mnist

    try:
        data = load_mnist(data_dir, split=split, download=False)
        return data.images[:n].clone(), data.labels[:n].clone(), f"MNIST {split}[:{n}]"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 1, 28, 28, generator=g)
        return x, torch.randint(0, 10, (n,), generator=g), "random images (MNIST not found)"


# -- MC dropout ---------------------------------------------------------------------------------
@contextmanager
def mc_dropout(model: nn.Module, p: float = 0.1) -> Iterator[str]:
    """Eval mode with dropout active, restoring every module's mode afterwards.

    A model with dropout modules gets them switched to training mode. A model without any
    (e.g. :class:`~rprselect.models.PocketUNet`) gets ``F.dropout(p)`` after every ReLU through
    forward hooks, the weights untouched, as MONAI's UNet places one dropout in each block.

    Yields:
        ``"modules"`` or ``"hooks"``: how dropout was switched on.
    """
    modes = {m: m.training for m in model.modules()}
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    handles = []
    model.eval()
    try:
        if drops:
            for d in drops:
                d.train()
        else:
            for m in model.modules():
                if isinstance(m, nn.ReLU):
                    handles.append(m.register_forward_hook(_dropout_hook(p)))
        yield "modules" if drops else "hooks"
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode


def _dropout_hook(p: float) -> Callable[[nn.Module, object, Tensor], Tensor]:
    def hook(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
        return F.dropout(output, p, training=True)

    return hook


@torch.no_grad()
def mc_dropout_entropy(
    model: nn.Module, X: Tensor, T: int = 20, batch_size: int = 64, p: float = 0.1
) -> Tensor:
    """Predictive entropy of MC dropout, per sample (averaged over voxels for segmentation).

    .. math::
        \\bar p = \\frac{1}{T} \\sum_{t=1}^{T} \\mathrm{softmax}(\\mathcal{F}_{\\theta_t}(x)),
        \\qquad H(x) = -\\sum_c \\bar p_c \\log \\bar p_c

    Args:
        model: the network (classes along dim 1 of its output).
        X: the pool ``(N, C, *spatial)``.
        T: stochastic forward passes per sample.
        batch_size: samples per forward pass.
        p: dropout probability of the hooks, for models without dropout modules.

    Returns:
        ``(N,)`` float64 entropies; higher means more uncertain.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    out = []
    with mc_dropout(model, p):
        for i in range(0, X.shape[0], batch_size):
            xb = X[i : i + batch_size]
            probs = sum(F.softmax(model(xb).double(), dim=1) for _ in range(T)) / T
            assert isinstance(probs, Tensor)
            h = -(probs * probs.clamp_min(1e-300).log()).sum(1)
            out.append(h.reshape(h.shape[0], -1).mean(1))
    return torch.cat(out)


# -- training epoch (target P2) -----------------------------------------------------------------
def train_epoch(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 32, lr: float = 3e-3
) -> float:
    """One epoch of SGD on cross-entropy, as the paper trains (Section 1.3); returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    model.train()
    t0 = time.perf_counter()
    for i in range(0, images.shape[0], batch_size):
        idx = order[i : i + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    return seconds


# -- the cheap-tolerance mode (target P3) -------------------------------------------------------
@dataclass
class SettledResult:
    """A truncated SVD stopped early, with why it stopped.

    Attributes:
        result: the Ritz triplets when it stopped (residuals may exceed ``tol``).
        rpr: ``(B,)`` RPR(x; k) at the stop.
        reason: ``"tol"`` (all residuals within tol), ``"settled"`` (RPR stopped moving) or
            ``"max_iter"``.
        steps: Lanczos steps taken.
    """

    result: SVDResult
    rpr: Tensor
    reason: str
    steps: int


def settled_lanczos(
    op: LinearOperator,
    X: Tensor,
    k: int = 10,
    tol: float = 1e-2,
    settle: float = 1e-2,
    patience: int = 2,
    config: SolverConfig | None = None,
) -> SettledResult:
    """Block Lanczos (the core's thick-restart iteration) that also stops once RPR settles.

    After every step with k Ritz values, :math:`r_t = \\mathrm{RPR}(x; k)` is evaluated from the
    Ritz vectors (no products). The solve stops when every residual is within ``tol``, or when
    for ``patience`` consecutive steps every sample satisfies
    :math:`|r_t - r_{t-1}| \\le \\texttt{settle} \\cdot r_t`. A ranking needs the ratio, not
    the vectors, to settle.

    The loop mirrors :func:`rprselect.solvers.lanczos.lanczos_svd` step for step and reuses
    its helpers; only the stopping test is new (see the report of issue 6 for the
    ``stop=`` callback that would let the core do this).

    Args:
        op: a batched operator from :func:`~rprselect.linearize_batch`.
        X: the samples ``(B, *in_shape)`` the operator was built at.
        k: triplets. tol: residual tolerance. settle: relative RPR change counted as settled.
        patience: consecutive settled steps needed.
        config: block size, ncv, max_iter and seed as in :class:`~rprselect.SolverConfig`.
    """
    config = config or SolverConfig()
    m, n = op.shape
    B, b = op.n_samples, config.block_size
    ncv = max(config.ncv or _default_ncv(k, b, m, n), k + b)
    dt, dev = op.dtype, op.device
    gen = torch.Generator().manual_seed(config.seed)
    before_p, before_n = op.n_products, op.n_passes
    x = X.reshape(B, n, 1).to(dev, dt)
    xnorm2 = x.double().pow(2).sum((1, 2))
    V = torch.zeros(B, n, 0, dtype=dt, device=dev)
    AV = torch.zeros(B, m, 0, dtype=dt, device=dev)
    U = torch.zeros(B, m, 0, dtype=dt, device=dev)
    Z = torch.zeros(B, n, 0, dtype=dt, device=dev)
    E = torch.zeros(B, 0, 0, dtype=dt, device=dev)
    P, _ = _orthonormalize(torch.randn(B, n, b, generator=gen, dtype=dt).to(dev), V, b, gen)
    prev, calm, reason, steps = None, 0, "max_iter", 0
    for steps in range(1, config.max_iter + 1):  # noqa: B007 - reported after the loop
        W = _apply(op, P, forward=True)
        V, AV = torch.cat([V, P], -1), torch.cat([AV, W], -1)
        bu, Zq = min(b, m - U.shape[-1]), None
        if bu > 0:
            Q, _ = _orthonormalize(W, U, bu, gen)
            Zq = _apply(op, Q, forward=False)
            U, Z = torch.cat([U, Q], -1), torch.cat([Z, Zq], -1)
        Xr, S, Y = _ritz(U, AV)
        bv = min(b, n - V.shape[-1])
        E = torch.zeros(B, max(bv, 0), U.shape[-1], dtype=dt, device=dev)
        if bv > 0:
            src = Zq if Zq is not None else torch.randn(B, n, b, generator=gen, dtype=dt).to(dev)
            P, C = _orthonormalize(src, V, bv, gen)
            if Zq is not None:
                E[..., U.shape[-1] - Zq.shape[-1] :] = C
        kk = min(k, S.shape[-1])
        est = (E.double() @ Xr[..., :kk]).norm(dim=1) / S[..., :kk].clamp_min(1e-300)
        if bv == 0 or (kk == k and bool((est <= tol).all())):
            reason = "tol"
            break
        if kk == k:
            cur = _ritz_rpr(V, Y[..., :k], x, xnorm2)
            calm = calm + 1 if prev is not None and bool(_still(cur, prev, settle)) else 0
            prev = cur
            if calm >= patience:
                reason = "settled"
                break
        if V.shape[-1] + bv > ncv:  # thick restart, exactly as the core does
            keep = min(max(k, min(ncv - b, (ncv + k) // 2), 1), S.shape[-1])
            Xl, Yl = Xr[..., :keep].to(dt), Y[..., :keep].to(dt)
            V, AV, U, Z, E = V @ Yl, AV @ Yl, U @ Xl, Z @ Xl, E @ Xl
    Xr, S, Y = _ritz(U, AV)
    kk = min(k, S.shape[-1])
    Uk, Vk = (U @ Xr[..., :kk].to(dt)).mT, (V @ Y[..., :kk].to(dt)).mT
    AVk, Zk = (AV @ Y[..., :kk].to(dt)).mT, (Z @ Xr[..., :kk].to(dt)).mT
    residuals = _residuals_from_products(AVk, Zk, Uk, Vk, S[..., :kk])
    result = SVDResult(
        U=Uk.reshape(B, kk, *op.out_shape),
        S=S[..., :kk],
        V=Vk.reshape(B, kk, *op.in_shape),
        residuals=residuals,
        converged=residuals <= tol,
        n_products=(op.n_products - before_p) // B,
        n_passes=op.n_passes - before_n,
        solver=f"lanczos-settled(b={b})",
        tol=tol,
    )
    return SettledResult(result, _ritz_rpr(V, Y[..., :kk], x, xnorm2), reason, steps)


def _ritz_rpr(V: Tensor, Yk: Tensor, x: Tensor, xnorm2: Tensor) -> Tensor:
    """RPR(x; k) of the Ritz vectors ``V Yk``, from the basis coefficients (no products)."""
    c = Yk.mT @ (V.mT @ x).double()
    return c.pow(2).sum((1, 2)) / xnorm2


def _still(cur: Tensor, prev: Tensor, settle: float) -> Tensor:
    return ((cur - prev).abs() <= settle * cur.abs()).all()


def settled_scores(
    model: nn.Module,
    X: Tensor,
    k: int = 10,
    tol: float = 1e-2,
    settle: float = 1e-2,
    batch_size: int = 4,
    config: SolverConfig | None = None,
) -> tuple[np.ndarray, list[str], int]:
    """RPR(x; k) of a pool by :func:`settled_lanczos`, ``batch_size`` samples per operator.

    Returns:
        ``(rpr (N,), stop reasons per batch, products per sample summed over batches)``.
    """
    rprs, reasons, products = [], [], 0
    for i in range(0, X.shape[0], batch_size):
        xb = X[i : i + batch_size]
        with torch.no_grad():
            op = linearize_batch(model, xb)
            out = settled_lanczos(op, xb, k=k, tol=tol, settle=settle, config=config)
        rprs.append(out.rpr.cpu().numpy())
        reasons.append(out.reason)
        products += out.result.n_products * xb.shape[0]
    return np.concatenate(rprs), reasons, products // X.shape[0]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors (1.0 for identical rankings)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


# -- the timed parts of the benchmark -----------------------------------------------------------
def p2_scoring(args: Any, weights: str) -> dict[str, Any]:
    """Target P2: one training epoch, then RPR and LPR (ranks 1..k) of the same images.

    The model trained here (one epoch, SGD, batch 32) is saved to ``weights`` for the MNIST case
    of the solver table, whose reference run gives the per-image cost of the paper's method.
    """
    from rprselect.models import MNISTNet
    from rprselect.scoring import score

    images, labels, source = mnist_images(args.p2_images, args.data_dir, args.seed)
    torch.manual_seed(args.seed)
    model = MNISTNet(dropout=0.25)
    print(f"[bench solvers] P2: one training epoch on {len(labels)} images ...", flush=True)
    epoch = train_epoch(model, images, labels)
    torch.save(model.state_dict(), weights)
    print(f"    {epoch:.1f} s; scoring RPR and LPR ...", flush=True)
    t0 = time.perf_counter()
    table = score(model, images, k=args.k, tol=args.tol, labels=labels, progress=False)
    seconds = time.perf_counter() - t0
    print(f"    {seconds:.1f} s", flush=True)
    assert table.lpr_curve is not None
    return {
        "images": int(len(labels)),
        "source": source,
        "epoch_seconds": epoch,
        "scoring_seconds": seconds,
        "solver": "auto (dense: m = 10)",
        "mean_rpr_k": float(table.rpr.mean()),
        "mean_lpr_k": float(table.lpr_curve[:, -1].mean()),
        "max_residual": float(table.max_residual.max()),
    }


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pool_throughput(args: Any, weights: str) -> dict[str, Any]:
    """Samples/s of RPR scoring, the cheap mode and MC dropout on an MNIST and a 3-D pool."""
    from rprselect.models import MNISTNet, PocketUNet
    from rprselect.scoring import score

    out: dict[str, Any] = {}
    X, _, source = mnist_images(args.throughput_mnist, args.data_dir, args.seed, split="test")
    mnist = MNISTNet(dropout=0.25)
    if Path(weights).exists():
        mnist.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    mnist.eval()
    print(f"[bench solvers] throughput: {source} ...", flush=True)
    table, t_rpr = _timed(lambda: score(mnist, X, k=args.k, tol=args.tol, progress=False))
    ent, t_mc = _timed(lambda: mc_dropout_entropy(mnist, X, T=args.mc_passes))
    out["mnist"] = {
        "pool": f"{len(X)} x MNIST ({source})",
        "n": len(X),
        "rpr_seconds": t_rpr,
        "mc_seconds": t_mc,
        "rpr_products": float(table.n_products.mean()),
        "spearman_mc_vs_rpr": spearman(ent.numpy(), -table.rpr),
    }
    torch.manual_seed(args.seed)
    unet = PocketUNet(4, 2, dims=3, depth=args.depth, filters=args.filters).eval()
    V = brain_volumes(args.pool_volumes, args.pool_size, seed=args.seed)
    cfg = SolverConfig(block_size=args.pool_block, seed=args.seed)
    bs = min(len(V), args.pool_batch)
    print(f"[bench solvers] throughput: {len(V)} volumes of {args.pool_size}^3 ...", flush=True)
    full, t_full = _timed(
        lambda: score(
            unet, V, args.k, args.tol, "lanczos", config=cfg, batch_size=bs, progress=False
        )
    )
    print(f"    tol {args.tol}: {t_full:.1f} s", flush=True)
    (cheap, reasons, cheap_products), t_cheap = _timed(
        lambda: settled_scores(unet, V, args.k, args.cheap_tol, args.settle, bs, cfg)
    )
    print(f"    cheap: {t_cheap:.1f} s ({reasons})", flush=True)
    ent3, t_mc3 = _timed(lambda: mc_dropout_entropy(unet, V, T=args.mc_passes, batch_size=bs))
    print(f"    MC dropout T={args.mc_passes}: {t_mc3:.1f} s", flush=True)
    out["volumes"] = {
        "pool": f"{len(V)} x 4x{args.pool_size}^3 synthetic brains",
        "n": len(V),
        "batch_size": bs,
        "rpr_seconds": t_full,
        "rpr_products": float(full.n_products.mean()),
        "rpr_max_residual": float(full.max_residual.max()),
        "cheap_seconds": t_cheap,
        "cheap_products": cheap_products,
        "cheap_stop": reasons,
        "mc_seconds": t_mc3,
        "rpr": full.rpr.tolist(),
        "cheap_rpr": cheap.tolist(),
        "spearman_cheap_vs_tol": spearman(cheap, full.rpr),
        "max_rel_rpr_cheap": float((np.abs(cheap - full.rpr) / np.abs(full.rpr)).max()),
        "spearman_mc_vs_rpr": spearman(ent3.numpy(), -full.rpr),
    }
    return out
