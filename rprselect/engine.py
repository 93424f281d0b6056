"""The batch engine: a batch of samples in, one table row per sample out.

Both drivers, :func:`rprselect.scoring.score` (one process) and
:func:`rprselect.distributed.score` (torchrun), send their batches here and never to each
other. The data path of a pool is

    pool --(driver: ids, content hashes, cache, shape groups)--> :meth:`Engine.score_batch`
    --> :func:`~rprselect.linearize_batch` (the model traced once per engine) --> operator
    ``apply`` --> :func:`~rprselect.svd_batch` --> RPR/LPR curves (paper Eq. 10, 13) --> rows.

For each sample x of a batch the engine builds A[x], takes its top-k singular triplets and
reports

.. math:: \\mathrm{RPR}(x; r) = \\frac{\\|V_r V_r^T x\\|^2}{\\|x\\|^2}, \\qquad r = 1..k,

with the solver's diagnostics. What the drivers share beyond the engine (progress bar, report,
shape groups) is in :mod:`rprselect.driving`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .linearize import Method, linearize_batch, prepare_graph
from .metrics import label_logits, lpr, rpr
from .settings import DEFAULT_K, ScoreSettings
from .solvers import NotConvergedWarning, Solver, SolverConfig, SVDResult, svd, svd_batch
from .table import MAX_LOGITS

__all__ = ["Engine", "score_batch", "default_batch_size", "RankChoiceWarning", "RankError"]


class RankChoiceWarning(UserWarning):
    """``k`` was not given and the default rank was capped by the rank of A[x]."""


class RankError(ValueError):
    """``k`` exceeds the rank of A[x]: a setting to fix, never recorded as a sample failure."""


def default_batch_size(sample_numel: int, pool_size: int | None = None) -> int:
    """Samples per batch: ``2**20 // numel`` in [1, 64], and at most an eighth of the pool.

    That is 64 for MNIST-sized images, 16 for 256x256 slices, 4 for a 64³ volume and 1 for a
    128³ four-channel one: each network pass then carries about a million input values per
    vector of the block. The eighth keeps a small pool's progress bar moving.
    """
    size = max(1, min(64, 2**20 // max(1, sample_numel)))
    if pool_size:
        size = min(size, max(1, math.ceil(pool_size / 8)))
    return size


class Engine:
    """Scores batches of one model under one :class:`~rprselect.ScoreSettings`.

    The model is traced once, when the engine is built (:func:`~rprselect.linearize.
    prepare_graph`), and the graph is reused for every batch and every sliding-window group.
    ``k`` is resolved at the first batch (:meth:`ScoreSettings.rank`) and kept.

    Args:
        model: the network, already on its device.
        settings: the scoring settings.
        labels: one class index per pool sample (indexed by pool position), or ``None``.

    Attributes:
        k: the rank in use (``None`` until the first batch).
        n_traces: how many times the model was traced (at most one).
    """

    def __init__(self, model: nn.Module, settings: ScoreSettings, labels: Tensor | None = None):
        self.model = model
        self.settings = settings
        self.labels = labels
        self.graph = prepare_graph(model, cast(Method, settings.method))
        self.n_traces = int(self.graph is not None)
        self.k: int | None = settings.k
        self._k_checked = False
        self._plans: dict[tuple[int, ...], Any] = {}

    def score_batch(self, X: Tensor, index: Sequence[int]) -> list[dict[str, Any]]:
        """Rows (without ``id``) for the samples ``X`` at pool positions ``index``.

        Raises:
            ValueError: the model rejects the samples, k exceeds the rank of A[x], or labels
                are given for a model that is not a classifier.
        """
        t0 = time.perf_counter()
        res, out_shape, output = (self._windowed if self.settings.roi_size else self._batched)(X)
        r = rpr(res, X).cpu()
        lcurve = None
        if self.labels is not None:
            lcurve = self._lpr(res, out_shape, list(index))
        seconds = time.perf_counter() - t0
        norms = X.reshape(X.shape[0], -1).double().norm(dim=1).cpu()
        keep_logits = output is not None and math.prod(out_shape) <= MAX_LOGITS
        rows = []
        for i in range(X.shape[0]):
            row: dict[str, Any] = {
                "index": int(index[i]),
                "rpr_curve": r[i].tolist(),
                "singular_values": res.S[i].double().cpu().tolist(),
                "converged": bool(res.converged[i].all()),
                "max_residual": float(res.residuals[i].max()),
                "n_products": int(res.n_products),
                "batch_seconds": seconds,
                "batch_size": int(X.shape[0]),
                "input_norm": float(norms[i]),
            }
            if keep_logits and output is not None:
                row["logits"] = output[i].reshape(-1).double().cpu().tolist()
            if lcurve is not None:
                row["lpr_curve"] = lcurve[i].tolist()
            rows.append(row)
        return rows

    # -- internals ---------------------------------------------------------------------------
    def _rank(self, m: int, n: int) -> int:
        try:
            k = self.settings.rank(m, n)
        except ValueError as err:
            raise RankError(str(err)) from None
        if not self._k_checked and self.settings.k is None and k < DEFAULT_K:
            warnings.warn(
                f"k was not given: using k={k}, the largest possible for this model "
                f"(min(m, n) = {min(m, n)} of A[x]; the default is {DEFAULT_K})",
                RankChoiceWarning,
                stacklevel=4,
            )
        if self.k is None:
            self.k = k
        elif k != self.k:  # a later shape group whose A[x] is smaller than the first one's
            raise RankError(
                f"k must satisfy 0 < k <= min(m, n) = {min(m, n)} for samples of this shape, "
                f"got {self.k} (chosen for the first samples)"
            )
        self._k_checked = True
        return self.k

    def _solve(
        self, op: Any, batched: bool, X: Tensor, config: SolverConfig | None = None
    ) -> SVDResult:
        """The solve of ``op`` (linearised at ``X``, ``(B, C, *spatial)``).

        In the ranking mode (``tol="rank"``) a :class:`~rprselect.solvers.ranking.RankStop`
        built from ``X`` ends the Lanczos iteration, and ``converged`` becomes, per sample,
        "RPR(x; k) certified within ``rank_delta``" (broadcast over the k triplets).
        """
        s = self.settings
        k = self._rank(*op.shape)
        stop = None
        if s.ranking:
            from .solvers.ranking import RankStop

            stop = RankStop(X, s.rank_delta)
        with warnings.catch_warnings():  # summarised once per pool by the driver
            warnings.simplefilter("ignore", NotConvergedWarning)
            solve = svd_batch if batched else svd
            res = solve(
                op,
                k=k,
                tol=s.solver_tol,
                solver=cast(Solver, s.solver),
                config=config or s.config,
                stop=stop,
            )
        # "exhausted": the Krylov space holds all of A, the residual test is exact there
        if stop is not None and res.solver.startswith("lanczos") and res.stop_reason != "exhausted":
            half = torch.maximum(stop.rpr - stop.lower, stop.upper - stop.rpr)
            ok = (half <= s.rank_delta).to(res.converged.device)
            ok = ok if batched else ok[0]
            res.converged = ok.unsqueeze(-1).expand_as(res.converged).clone()
        return res

    def _batched(self, X: Tensor) -> tuple[SVDResult, tuple[int, ...], Tensor | None]:
        op = linearize_batch(self.model, X, cast(Method, self.settings.method), graph=self.graph)
        return self._solve(op, batched=True, X=X), op.out_shape, op.output

    def _windowed(self, X: Tensor) -> tuple[SVDResult, tuple[int, ...], Tensor | None]:
        from .sliding import sliding_window_operator

        results: list[SVDResult] = []
        out_shape: tuple[int, ...] = ()
        outputs: list[Tensor] = []
        for x in X:
            window, config, stream = dict(self.settings.window or {}), self.settings.config, False
            if config.max_memory is not None:  # fit the budget (solvers.memory.plan_sliding)
                plan = self._plan(x, window)
                window["sw_batch_size"], stream = plan.sw_batch_size, plan.stream
                config = config.replace(ncv=plan.ncv, basis_dtype=plan.basis_dtype)
            op = sliding_window_operator(
                self.model,
                x,
                method=cast(Method, self.settings.method),
                graph=self.graph,
                stream=stream,
                **window,
            )
            results.append(self._solve(op, batched=False, X=x.unsqueeze(0), config=config))
            out_shape = op.out_shape
            if op.output is not None:
                outputs.append(op.output)
        out = torch.stack(outputs) if len(outputs) == len(X) else None
        return _stack(results), out_shape, out

    def _plan(self, x: Tensor, window: dict[str, Any]) -> Any:
        """The memory plan of a volume of ``x``'s shape (measured once per shape)."""
        from .solvers.memory import plan_sliding

        key = tuple(x.shape)
        if key not in self._plans:
            c = self.settings.config
            k = self.k or self.settings.k or DEFAULT_K
            assert c.max_memory is not None
            self._plans[key] = plan_sliding(
                self.model, x, window, k, c.max_memory, c.block_size, c.ncv, c.basis_dtype
            )
        return self._plans[key]

    def _lpr(self, res: SVDResult, out_shape: tuple[int, ...], index: list[int]) -> Tensor:
        assert self.labels is not None
        c = self.settings.num_classes
        c = c if c is not None else (out_shape[0] if len(out_shape) == 1 else -1)
        if tuple(out_shape) != (c,):
            raise ValueError(
                "labels need a classifier whose output has shape (num_classes,), got output "
                f"shape {tuple(out_shape)}"
            )
        y = label_logits(self.labels[index], c, scale=self.settings.label_scale)
        return lpr(res, y.to(res.U.device)).cpu()


def score_batch(
    model: nn.Module, X: Tensor, settings: ScoreSettings, labels: Any = None
) -> list[dict[str, Any]]:
    """Rows for one batch ``X`` ``(B, C, *spatial)`` (a one-off :class:`Engine`).

    Args:
        model: the network (on the device of ``X``).
        X: the samples.
        settings: the scoring settings.
        labels: one class index per sample of ``X``, or ``None``.

    Returns:
        One dict per sample with ``index`` (its position in ``X``), ``rpr_curve``,
        ``singular_values``, ``converged``, ``max_residual``, ``n_products``,
        ``batch_seconds``, ``batch_size``, ``input_norm`` and, where they apply, ``logits``
        and ``lpr_curve``.
    """
    lab = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    return Engine(model, settings, lab).score_batch(X, list(range(X.shape[0])))


def _stack(results: list[SVDResult]) -> SVDResult:
    """One batched result from unbatched ones (each sample solved on its own)."""
    first = results[0]
    return dataclasses.replace(
        first,
        U=torch.stack([r.U for r in results]),
        S=torch.stack([r.S for r in results]),
        V=torch.stack([r.V for r in results]),
        residuals=torch.stack([r.residuals for r in results]),
        converged=torch.stack([r.converged for r in results]),
        n_products=max(r.n_products for r in results),
    )
