"""Pool throughput for ``rprselect bench solvers``: RPR scoring against MC-dropout entropy.

Three ways to rank a pool, each timed on the same model and samples:

* :func:`rprselect.scoring.score` at the solver tolerance (``tol=1e-4``);
* the ranking mode :func:`rank_scores`: Lanczos stopped by
  :class:`~rprselect.solvers.ranking.RankStop` once every RPR(x; k) is certified to within
  ``delta`` (target P3);
* MC dropout with ``T`` stochastic forward passes and the predictive entropy, the acquisition
  MONAI Label users run today (:func:`mc_dropout_entropy`).

It also times one training epoch of the MNIST CNN (target P2), pool scoring with a fresh
``torch.fx`` trace per batch against one graph traced once (:func:`trace_once`), and makes the
synthetic 4-channel brain volumes of the 3-D cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import rprselect
from rprselect.benchmarks.bench_data import (
    brain_volumes,
    mnist_images,
    unet_and_volumes,
)
from rprselect.linearize import linearize_batch, prepare_graph
from rprselect.solvers import SolverConfig
from rprselect.solvers.lanczos import lanczos_svd
from rprselect.solvers.ranking import RankStop

__all__ = [
    "brain_volumes",
    "mnist_images",
    "p2_scoring",
    "pool_throughput",
    "mc_dropout",
    "mc_dropout_entropy",
    "rank_scores",
    "score_pool",
    "spearman",
    "trace_once",
    "train_epoch",
]


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


# -- the ranking mode (target P3) and trace-once -------------------------------------------------
def rank_scores(
    model: nn.Module,
    X: Tensor,
    k: int = 10,
    delta: float = 1e-2,
    tol: float = 1e-4,
    batch_size: int = 4,
    config: SolverConfig | None = None,
    graph: fx.GraphModule | None = None,
    per_volume: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """RPR(x; k) of a pool in ranking mode: Lanczos stopped by :class:`RankStop` (``delta``).

    Args:
        model: the network. X: the pool. k: rank. delta: certified accuracy of RPR(x; k).
        tol: residual tolerance (the solve also stops there). batch_size: samples per operator.
        config: solver knobs. graph: the model traced once (:func:`prepare_graph`).
        per_volume: if given, receives per sample the products at which its own certificate
            held (:attr:`RankStop.certified_at`; the batch's products where it never did), to
            show what the lockstep batch (the slowest sample decides) costs.

    Returns:
        ``(rpr (N,), certified half-widths (N,), stop reasons per batch, products per sample
        averaged over the pool)``.
    """
    config = config or SolverConfig()
    rprs, halves, reasons, products = [], [], [], 0
    for i in range(0, X.shape[0], batch_size):
        xb = X[i : i + batch_size]
        with torch.no_grad():
            op = linearize_batch(model, xb, graph=graph)
            rule = RankStop(xb, delta)
            res = lanczos_svd(op, k, tol, config, stop=rule)
        rpr = rprselect.rpr(res, xb)[:, -1].cpu().numpy()
        half = (rule.upper - rule.lower).cpu().numpy() / 2  # the last step the rule saw
        rprs.append(rpr)
        halves.append(half)
        if per_volume is not None:
            own = rule.certified_at.clamp(max=res.n_products)
            per_volume += torch.where(own < 0, res.n_products, own).tolist()
        reasons.append(res.stop_reason)
        products += res.n_products * xb.shape[0]
    return np.concatenate(rprs), np.concatenate(halves), reasons, products // X.shape[0]


_TRACES = [0]


def _count_traces() -> Callable[[], int]:
    """Count ``torch.fx`` traces from now on, by :class:`~rprselect.adjoint.AdjointOperator` and
    :func:`~rprselect.linearize.prepare_graph` (a wrapper around the name each module calls;
    measurement only)."""
    import sys

    # sys.modules: ``rprselect.linearize`` as an attribute is the function of that name
    for module in (sys.modules["rprselect.adjoint"], sys.modules["rprselect.linearize"]):
        if not getattr(module.trace, "counted", False):  # type: ignore[attr-defined]
            inner = module.trace  # type: ignore[attr-defined]

            def counted(model: nn.Module, _inner: Any = inner) -> fx.GraphModule:
                _TRACES[0] += 1
                return _inner(model)

            counted.counted = True  # type: ignore[attr-defined]
            module.trace = counted  # type: ignore[assignment,attr-defined]
    start = _TRACES[0]
    return lambda: _TRACES[0] - start


def score_pool(
    model: nn.Module,
    X: Tensor,
    k: int,
    tol: float,
    batch_size: int,
    config: SolverConfig,
    graph: fx.GraphModule | None,
) -> tuple[np.ndarray, float, int, float]:
    """RPR(x; k) of a pool batch by batch as the scoring engine does: ``linearize_batch`` with
    ``graph`` (``None``: a fresh trace per batch), then ``svd_batch(solver="auto")``.

    Returns:
        ``(rpr (N,), seconds, traces made, products per sample)``.
    """
    traces = _count_traces()
    t0 = time.perf_counter()
    out, products = [], 0
    for i in range(0, X.shape[0], batch_size):
        xb = X[i : i + batch_size]
        with torch.no_grad():
            op = linearize_batch(model, xb, graph=graph)
            res = rprselect.svd_batch(op, k=k, tol=tol, config=config)
        out.append(rprselect.rpr(res, xb)[:, -1].cpu().numpy())
        products += res.n_products * xb.shape[0]
    seconds = time.perf_counter() - t0
    return np.concatenate(out), seconds, traces(), products / X.shape[0]


def trace_once(
    model: nn.Module, X: Tensor, k: int, tol: float, batch_size: int, config: SolverConfig,
    repeats: int = 3,
) -> dict[str, Any]:  # fmt: skip
    """Pool scoring with a fresh trace per batch against one :func:`prepare_graph` reused.

    Both variants run ``repeats`` times, interleaved (so that a shared machine's load hits
    both alike); the fastest of each is kept. Traces are counted, not assumed.
    """
    fresh, once, traces = [], [], {}
    for _ in range(repeats):
        r0, t, traces["fresh"], _ = score_pool(model, X, k, tol, batch_size, config, None)
        fresh.append(t)
        count = _count_traces()
        t0 = time.perf_counter()
        graph = prepare_graph(model)  # charged to the traced-once variant
        t_trace = time.perf_counter() - t0
        r1, t, _, _ = score_pool(model, X, k, tol, batch_size, config, graph)
        traces["once"] = count()
        once.append(t + t_trace)
    return {
        "n": int(X.shape[0]),
        "batches": -(-X.shape[0] // batch_size),
        "fresh_seconds": min(fresh),
        "once_seconds": min(once),
        "ratio": min(fresh) / max(min(once), 1e-12),
        "traces_fresh": traces["fresh"],
        "traces_once": traces["once"],
        "same_rpr": bool(np.allclose(r0, r1, rtol=1e-6, atol=1e-9)),
    }


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
    """Samples/s of RPR scoring, the ranking mode and MC dropout on an MNIST and a 3-D pool,
    and the trace-once saving on both."""
    from rprselect.models import MNISTNet

    out: dict[str, Any] = {}
    X, _, source = mnist_images(args.throughput_mnist, args.data_dir, args.seed, split="test")
    mnist = MNISTNet(dropout=0.25)
    if Path(weights).exists():
        mnist.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    mnist.eval()
    cfg = SolverConfig(block_size=args.pool_block, seed=args.seed)
    print(f"[bench solvers] throughput: {source} ...", flush=True)
    graph = prepare_graph(mnist)
    rpr, t_rpr, _, mnist_products = score_pool(
        mnist, X, args.k, args.tol, args.mnist_batch, cfg, graph
    )
    ent, t_mc = _timed(lambda: mc_dropout_entropy(mnist, X, T=args.mc_passes))
    out["mnist"] = {
        "pool": f"{len(X)} x MNIST ({source})",
        "n": len(X),
        "rpr_seconds": t_rpr,
        "mc_seconds": t_mc,
        "rpr_products": mnist_products,
        "spearman_mc_vs_rpr": spearman(ent.numpy(), -rpr),
    }
    print("[bench solvers] trace once vs a trace per batch (MNIST) ...", flush=True)
    out["trace_once_mnist"] = trace_once(mnist, X, args.k, args.tol, args.mnist_batch, cfg)
    out["trace_once_mnist"]["pool"] = out["mnist"]["pool"]
    weights_3d = getattr(args, "weights", None)
    unet, V = unet_and_volumes(
        args.pool_volumes, args.pool_edge, args.depth, args.filters, weights_3d, args.seed
    )
    trained = f"trained ({Path(weights_3d).name})" if weights_3d else "random weights"
    bs = min(len(V), args.pool_batch)
    graph = prepare_graph(unet)
    print(f"[bench solvers] throughput: {len(V)} volumes of {args.pool_edge}^3 ...", flush=True)
    lz = cfg
    full, t_full, _, products_full = score_pool(unet, V, args.k, args.tol, bs, lz, graph)
    print(f"    tol {args.tol}: {t_full:.1f} s", flush=True)
    own: list[int] = []
    (rank, half, reasons, rank_products), t_rank = _timed(
        lambda: rank_scores(unet, V, args.k, args.rank_delta, args.tol, bs, lz, graph, own)
    )
    print(f"    ranking mode: {t_rank:.1f} s ({reasons})", flush=True)
    ent3, t_mc3 = _timed(lambda: mc_dropout_entropy(unet, V, T=args.mc_passes, batch_size=bs))
    print(f"    MC dropout T={args.mc_passes}: {t_mc3:.1f} s", flush=True)
    n_top = max(1, len(V) // 10)
    top_full, top_rank = set(np.argsort(full)[:n_top]), set(np.argsort(rank)[:n_top])
    out["volumes"] = {
        "pool": f"{len(V)} x {V.shape[1]}x{args.pool_edge}^3, {trained}",
        "n": len(V),
        "batch_size": bs,
        "rpr_seconds": t_full,
        "rpr_products": products_full,
        "rank_seconds": t_rank,
        "rank_products": rank_products,
        "rank_stop": reasons,
        "rank_delta": args.rank_delta,
        "rank_max_half_width": float(half.max()),
        # products had each volume stopped at its own certificate (no lockstep batch)
        "rank_volume_products": float(np.mean(own)),
        "mc_seconds": t_mc3,
        "rpr": full.tolist(),
        "rank_rpr": rank.tolist(),
        "spearman_rank_vs_tol": spearman(rank, full),
        "same_top10": top_full == top_rank,
        "max_abs_rpr_rank": float(np.abs(rank - full).max()),
        "spearman_mc_vs_rpr": spearman(ent3.numpy(), -full),
    }
    sub = V[: min(len(V), args.trace_volumes)]
    print(f"[bench solvers] trace once vs a trace per batch ({len(sub)} volumes) ...", flush=True)
    # one volume per batch: as many traces as volumes against one
    out["trace_once_volumes"] = trace_once(unet, sub, args.k, args.tol, 1, lz, repeats=1)
    out["trace_once_volumes"]["pool"] = f"{len(sub)} x {args.pool_edge}^3 volumes, {trained}"
    return out
