"""A MONAI/ignite handler that proposes what to annotate next, every few epochs of training.

It follows MONAI's handler convention (``attach(engine)`` / ``__call__(engine)``, like
``monai.handlers.ValidationHandler``): attached to a ``SupervisedTrainer``, it scores an
unlabelled pool with the network as it is at the end of an epoch, and stores and writes the
samples that :func:`~rprselect.select.select` proposes: by default
:data:`~rprselect.select.DEFAULT_STRATEGY` (chosen by the recorded rule of docs/acquisition.md),
which falls back to the paper's rule, the lowest RPR (Eq. 10), when the model's outputs are too
large to keep (segmentation). Volumes larger than the training patches are
scored through sliding windows, as the paper does with MONAI's inferer (Section 1.4), with
:func:`~rprselect.sliding.sliding_window_operator`.

ignite is imported only by :meth:`RPRHandler.attach`; MONAI itself is not needed here.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from rprselect.linearize import Method
from rprselect.modes import eval_mode
from rprselect.registry import preset_of
from rprselect.scoring import score
from rprselect.select import DEFAULT_STRATEGY, select
from rprselect.sliding import BlendMode, sliding_window_operator
from rprselect.solvers import SolverConfig
from rprselect.table import ScoreTable

__all__ = ["RPRHandler", "sliding_window_operator"]

_EXTRA = "pip install 'rprselect[monai]'"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class RPRHandler:
    """Score a pool every ``every`` epochs and propose ``n_propose`` samples by ``strategy``.

    At each firing the handler puts the network in eval mode, computes RPR(x; k) of every pool
    sample, restores each module's previous mode (train mode during training) and then

    - sets ``engine.state.rpr_proposals``: a list of ``{"rank", "id", "index", "rpr",
      "converged"}`` dicts, in picking order (lowest RPR first for ``"lowest"``);
    - sets ``engine.state.rpr_scores``: the whole :class:`~rprselect.scoring.ScoreTable`;
    - writes ``output_dir/rpr_epoch{N}.json`` with the epoch, the settings and the proposals,
      and (``plot=True``, the default) ``output_dir/rpr_epoch{N}.png``: the proposed samples
      with their RPR (middle axial slice of a volume, the network's prediction laid over it) and the
      pool's RPR histogram with the proposals marked (:func:`rprselect.plots.plot_proposals`, as
      ``rprselect select --plot`` draws it);
    - appends the proposals to ``history_`` (a dict from epoch to proposals).

    Args:
        pool: the unlabelled samples: a tensor or array ``(N, C, *spatial)``, a ``Dataset``
            (items: tensors, ``(image, label)`` tuples or dicts with ``image_key``, e.g. a
            MONAI ``Dataset``), a ``DataLoader``, or a :class:`~rprselect.pool.FilePool`.
        every: fire at the end of every ``every``-th epoch.
        n_propose: how many samples to propose (fewer if the pool is smaller).
        k: singular triplets per sample; ``None`` adapts to the model
            (``min(10, min(m, n))``, see :class:`~rprselect.ScoreSettings`).
        roi_size: score each volume through sliding windows of this size, one int per spatial
            axis (one volume at a time); ``None`` scores whole samples in batches. Both go
            through :func:`~rprselect.score`.
        sw_batch_size: windows per network pass group (see ``sliding_window_operator``).
        overlap: window overlap in ``[0, 1)``.
        output_dir: folder for the JSON files (created); ``None`` writes nothing.
        tol: solver tolerance. solver: ``"auto"``, ``"dense"``, ``"lanczos"`` or ``"slepc"``.
        image_key: the image's key in dict items.
        mode: window blending, ``"constant"`` or ``"gaussian"``.
        method: how to linearise, see :func:`~rprselect.linearize`.
        config: solver knobs (:class:`~rprselect.SolverConfig`).
        ids: one id per pool sample; default file names for a FilePool, else positions.
        network: the model to score; default ``engine.network`` (a MONAI trainer's).
        progress: show a progress bar while scoring.
        plot: write the PNG beside the JSON at every firing (the default; needs matplotlib,
            without it a warning says so and only the JSON is written).
        strategy: any name :func:`~rprselect.select.select` takes; ``None`` is
            :data:`~rprselect.select.DEFAULT_STRATEGY`. A strategy that needs the model's
            outputs uses ``"lowest"`` (the paper's rule) when the table holds no logits.

    Raises:
        ValueError: ``every``, ``n_propose``, ``k`` or ``sw_batch_size`` below 1, an
            ``overlap`` outside ``[0, 1)``, an unknown ``mode``, or a ``roi_size`` that is not
            one int per axis.

    Example:
        ``RPRHandler(pool, every=2, roi_size=(64, 64, 64), output_dir="out").attach(trainer)``
    """

    def __init__(
        self,
        pool: Any,
        every: int = 1,
        n_propose: int = 10,
        k: int | None = None,
        roi_size: Sequence[int] | None = None,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        output_dir: str | os.PathLike[str] | None = None,
        tol: float = 1e-4,
        solver: str = "auto",
        image_key: str = "image",
        *,
        mode: BlendMode = "constant",
        method: Method = "auto",
        config: SolverConfig | None = None,
        ids: Sequence[str] | None = None,
        network: nn.Module | None = None,
        progress: bool = False,
        plot: bool = True,
        strategy: str | None = None,
    ) -> None:
        self.pool = pool
        self.every = _positive_int("every", every)
        self.n_propose = _positive_int("n_propose", n_propose)
        self.k = None if k is None else _positive_int("k", k)
        if roi_size is not None and (
            isinstance(roi_size, (str, bytes))
            or not isinstance(roi_size, Sequence)
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in roi_size)
        ):
            raise ValueError(f"roi_size must be None or one int per spatial axis, got {roi_size!r}")
        self.roi_size = None if roi_size is None else tuple(roi_size)
        self.sw_batch_size = _positive_int("sw_batch_size", sw_batch_size)
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.overlap = overlap
        if mode not in ("constant", "gaussian"):
            raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
        self.output_dir = output_dir
        self.tol = tol
        self.solver = solver
        self.image_key = image_key
        self.mode = mode
        self.method = method
        self.config = config
        self.ids = ids
        self.network = network
        self.progress = progress
        self.plot = plot
        self.strategy = DEFAULT_STRATEGY if strategy is None else strategy
        if self.strategy not in ("lowest", "diverse"):
            preset_of(self.strategy)  # a ValueError naming every known strategy
        self.history_: dict[int, list[dict[str, Any]]] = {}

    def attach(self, engine: Any) -> None:
        """Fire at ``Events.EPOCH_COMPLETED(every=every)`` of an ignite engine.

        Raises:
            ImportError: pytorch-ignite is missing.
        """
        try:
            from ignite.engine import Events
        except ImportError as err:
            raise ImportError(f"RPRHandler.attach needs pytorch-ignite: {_EXTRA}") from err
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)

    def __call__(self, engine: Any) -> None:
        """Score the pool with the engine's network and publish the proposals."""
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if not isinstance(network, nn.Module):
            raise TypeError(
                "RPRHandler needs engine.network (a MONAI trainer) or network=..., got "
                f"{type(network).__name__}"
            )
        epoch = int(engine.state.epoch)
        with eval_mode(network):
            table = self.score(network)
        chosen = select(table, min(self.n_propose, len(table)), self.strategy)
        rows = {int(i): r for r, i in enumerate(table.index)}
        proposals = [
            {
                "rank": rank + 1,
                "id": sid,
                "index": int(index),
                "rpr": float(value),
                "converged": bool(table.converged[rows[int(index)]]),
            }
            for rank, (sid, index, value) in enumerate(
                zip(chosen.ids, chosen.indices, chosen.scores, strict=True)
            )
        ]
        engine.state.rpr_proposals = proposals
        engine.state.rpr_scores = table
        self.history_[epoch] = proposals
        if self.output_dir is not None:
            self._write(epoch, table, proposals)
            if self.plot:
                self._plot(epoch, table, chosen, network)

    def score(self, network: nn.Module) -> ScoreTable:
        """RPR of every pool sample under ``network`` as it is now (see the class settings)."""
        window = None
        if self.roi_size is not None:
            window = {
                "overlap": self.overlap,
                "mode": self.mode,
                "sw_batch_size": self.sw_batch_size,
            }
        return score(
            network,
            self.pool,
            k=self.k,
            tol=self.tol,
            solver=self.solver,
            progress=self.progress,
            config=self.config,
            method=self.method,
            ids=self.ids,
            image_key=self.image_key,
            roi_size=self.roi_size,
            sliding=window,
        )

    def _write(self, epoch: int, table: ScoreTable, proposals: list[dict[str, Any]]) -> None:
        folder = Path(self.output_dir)  # type: ignore[arg-type]
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "epoch": epoch,
            "k": self.k,
            "roi_size": None if self.roi_size is None else list(self.roi_size),
            "n_scored": len(table),
            "n_converged": int(table.converged.sum()),
            "proposals": proposals,
            "failures": [
                {"id": f.id, "index": f.index, "reason": f.reason} for f in table.failures
            ],
        }
        path = folder / f"rpr_epoch{epoch}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    def _plot(self, epoch: int, table: ScoreTable, chosen: Any, network: nn.Module) -> None:
        try:
            from rprselect.plots import plot_proposals

            figure = plot_proposals(
                table,
                chosen,
                self.pool if hasattr(self.pool, "__getitem__") else None,  # not a DataLoader
                model=network,
                path=Path(self.output_dir) / f"rpr_epoch{epoch}.png",  # type: ignore[arg-type]
                title=f"epoch {epoch}: {len(chosen)} proposals ({chosen.strategy})",
                image_key=self.image_key,
            )
        except ImportError as err:
            warnings.warn(f"RPRHandler wrote no PNG: {err}", UserWarning, stacklevel=2)
            return
        figure.clear()

    def __repr__(self) -> str:
        return (
            f"RPRHandler(every={self.every}, n_propose={self.n_propose}, k={self.k}, "
            f"roi_size={self.roi_size}, output_dir={self.output_dir!r})"
        )
