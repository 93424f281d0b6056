"""RPR in MONAI Label: a scoring method, an active-learning strategy and a batch proposal.

MONAI Label serves one image at a time to 3D Slicer or OHIF through a *strategy*, which reads
per-image scores that a *scoring method* stored in the datastore. Both are small classes
shaped like the host: ``__init__(description)``, ``info()`` and ``__call__(request,
datastore)``.

- :class:`RPRScoring` computes RPR(x; k) (paper Eq. 10) of every unlabelled image with the
  network of an infer task, through the same pre-transforms and the same sliding windows as
  the task's inference, and stores it with ``datastore.update_image_info``. It needs no change
  to the network (MC-dropout epistemic scoring needs dropout injected into it).
- :class:`RPRStrategy` serves the unlabelled image with the lowest stored RPR that no client
  was given within the last ``reset`` seconds.
- :func:`propose` returns the ``n`` lowest at once, and can push them to CVAT through MONAI
  Label's ``CVATDatastore``.

Needs MONAI Label (``pip install 'rprselect[monailabel]'``, then see scripts/install.sh).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rprselect.linearize import Method, eval_mode
from rprselect.scoring import score
from rprselect.solvers import NotConvergedWarning, SolverConfig

_EXTRA = "pip install 'rprselect[monailabel]' (and monailabel itself, see scripts/install.sh)"
try:
    from monailabel.interfaces.datastore import Datastore
    from monailabel.interfaces.tasks.scoring import ScoringMethod
    from monailabel.interfaces.tasks.strategy import Strategy
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(f"rprselect.integrations.monailabel needs MONAI Label: {_EXTRA}") from _err

__all__ = ["RPRScoring", "RPRStrategy", "Proposal", "propose", "ranked_images"]

logger = logging.getLogger(__name__)

_SOLVERS = ("auto", "dense", "lanczos", "slepc")


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    return key


def _device(requested: Any) -> str:
    """The torch device of a request: its ``device`` (a name or a list of names), else CUDA when
    present; a CUDA device on a machine without one falls back to the CPU."""
    if isinstance(requested, list | tuple):
        requested = requested[0] if requested else None
    name = str(requested) if requested else ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    try:
        torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device must be a torch device name, got {requested!r}") from err
    return name


def _model_version(network: nn.Module) -> str:
    """A short SHA-256 of the network's weights: a new checkpoint is a new version."""
    h = hashlib.sha256()
    for name, t in network.state_dict().items():
        h.update(name.encode())
        if isinstance(t, Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _as_tensor(value: Any, key: str) -> Tensor:
    if hasattr(value, "as_tensor"):  # a MONAI MetaTensor
        value = value.as_tensor()
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise TypeError(
            f"the pre-transforms must leave a tensor or array under {key!r}, got "
            f"{type(value).__name__}"
        )
    return value.detach().float().contiguous()


def sliding_options(inferer: Any) -> tuple[tuple[int, ...] | None, dict[str, Any] | None]:
    """``(roi_size, sliding)`` for :func:`rprselect.score` from a MONAI inferer.

    A ``SlidingWindowInferer`` gives its window size, overlap, batch size, blending mode,
    Gaussian sigma and padding mode, so that A[x] is the matrix of the task's own inference;
    a ``SimpleInferer`` (or ``None``) scores the whole volume.

    Raises:
        ValueError: an inferer whose inference is not linear in its windows (a padding value
            other than 0, a custom weight map, coordinates passed to the network) or another
            kind of inferer.
    """
    kind = type(inferer).__name__
    if inferer is None or kind == "SimpleInferer":
        return None, None
    if kind != "SlidingWindowInferer":
        raise ValueError(
            "the infer task's inferer must be a SimpleInferer or a SlidingWindowInferer, "
            f"got {kind}"
        )
    if float(getattr(inferer, "cval", 0.0)) != 0.0:
        raise ValueError(
            f"SlidingWindowInferer cval must be 0 (linear padding), got {inferer.cval}"
        )
    if getattr(inferer, "roi_weight_map", None) is not None or getattr(
        inferer, "with_coord", False
    ):
        raise ValueError("SlidingWindowInferer with roi_weight_map or with_coord is not supported")
    roi = inferer.roi_size
    roi_size = tuple(int(r) for r in (roi if isinstance(roi, Sequence) else [roi]))
    sliding = {
        "overlap": inferer.overlap,
        "sw_batch_size": int(inferer.sw_batch_size),
        "mode": str(getattr(inferer.mode, "value", inferer.mode)),
        "sigma_scale": inferer.sigma_scale,
        "padding_mode": str(getattr(inferer.padding_mode, "value", inferer.padding_mode)),
    }
    return roi_size, sliding


class RPRScoring(ScoringMethod):
    """Store RPR(x; k) of every unlabelled image of a MONAI Label datastore.

    .. math:: \\mathrm{RPR}(x; r) = \\|V_r[x] V_r^T[x] x\\|_2^2 / \\|x\\|_2^2,\\quad r=1..k
        \\quad\\text{(paper Eq. 10)}

    Each call loads the infer task's network (``_get_network``, so a new checkpoint is picked
    up), runs the task's pre-transforms on each image (never the whole inference, which would
    also invert and write), reads the task's inferer (a ``SlidingWindowInferer`` gives the
    windows of :func:`rprselect.sliding.sliding_window_operator`) and stores, with
    ``datastore.update_image_info``, the JSON values ``{key}`` (RPR at rank k),
    ``{key}_curve`` (ranks 1..k), ``{key}_converged``, ``{key}_k``, ``{key}_model`` (a hash of
    the weights), ``{key}_ts`` (Unix time) and ``{key}_error`` (``None``, or why the image
    could not be scored; its ``{key}`` is then ``None``). An image whose stored model version
    and k match is skipped before it is loaded, since MONAI Label re-runs every scoring method
    after each training run and each next-sample request. The constructor does no work: MONAI
    Label re-creates the app, and so this object, in a subprocess for every scoring run.

    Args:
        infer_task: a MONAI Label ``BasicInferTask`` (or ``BundleInferTask``) with a Python
            network (TorchScript has no layers to linearise).
        k: singular triplets per image; a request may override it with ``{"k": ...}``.
        tol: solver tolerance. solver: ``"auto"``, ``"dense"``, ``"lanczos"`` or ``"slepc"``.
        key: prefix of the stored values.
        max_samples: score at most this many images per call (0: all).
        method: how to linearise, see :func:`rprselect.linearize`.
        config: solver knobs (:class:`rprselect.SolverConfig`).
        description: shown by the clients.

    Raises:
        ValueError: bad settings. TypeError: an ``infer_task`` without a network loader.
    """

    def __init__(
        self,
        infer_task: Any,
        k: int = 10,
        tol: float = 1e-4,
        solver: str = "auto",
        key: str = "rpr",
        max_samples: int = 0,
        *,
        method: Method = "auto",
        config: SolverConfig | None = None,
        description: str = "Right Projection Ratio (RPR) of the network's truncated SVD",
    ) -> None:
        super().__init__(description)
        for attr in ("_get_network", "pre_transforms", "run_pre_transforms", "inferer"):
            if not callable(getattr(infer_task, attr, None)):
                raise TypeError(
                    "infer_task must be a MONAI Label BasicInferTask or BundleInferTask, got "
                    f"{type(infer_task).__name__} (it has no {attr})"
                )
        self.infer_task = infer_task
        self.k = _positive_int("k", k)
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        self.tol = float(tol)
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
        self.solver = solver
        self.key = _check_key(key)
        self.max_samples = _positive_int("max_samples", max_samples, minimum=0)
        self.method = method
        self.config = config

    def info(self) -> dict[str, Any]:
        """Description and the options a client shows: ``k`` and the device (a list is a
        choice, first entry the default, as in MONAI Label's infer tasks)."""
        devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
        return {"description": self.description, "config": {"k": self.k, "device": devices}}

    def network(self, device: str, request: Mapping[str, Any] | None = None) -> nn.Module:
        """The infer task's network on ``device``, as its inference loads it.

        Raises:
            TypeError: the task holds only a TorchScript model.
        """
        network = self.infer_task._get_network(device, dict(request or {}))
        if isinstance(network, torch.jit.ScriptModule | torch.jit.RecursiveScriptModule):
            raise TypeError(
                "RPRScoring needs the network's Python module, got a TorchScript model: give "
                "the infer task network=YourNet(...) and a state-dict checkpoint"
            )
        if not isinstance(network, nn.Module):
            raise TypeError(
                f"the infer task's network must be a torch.nn.Module, got {type(network).__name__}"
            )
        return network

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any]:
        """Score the unlabelled images that lack a score for this model and k.

        Args:
            request: MONAI Label's request; reads ``device``, ``k``, ``label_tag`` and
                ``labels`` (which images count as labelled).
            datastore: the app's datastore.

        Returns:
            ``{"total", "skipped", "executed", "latency", "failures"}``: unlabelled images,
            images skipped as up to date, images scored now (failures included), seconds, and
            ``[{"id", "error"}]`` for the images that could not be scored.
        """
        start = time.time()
        device = _device(request.get("device"))
        k = request.get("k", self.k)
        if isinstance(k, str) and k.strip().isdigit():  # a client's option arrives as text
            k = int(k)
        k = _positive_int("k", k)
        network = self.network(device, request)
        version = _model_version(network)
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        skipped = executed = 0
        failures: list[dict[str, str]] = []
        for image_id in images:
            info = datastore.get_image_info(image_id)
            if info.get(f"{self.key}_model") == version and info.get(f"{self.key}_k") == k:
                skipped += 1
                continue
            if self.max_samples and executed >= self.max_samples:
                break
            executed += 1
            update = {f"{self.key}_k": k, f"{self.key}_model": version}
            try:
                update.update(self._score_image(network, datastore, image_id, device, k))
            # A volume can fail in many ways (an unreadable file, a transform, NaN values, the
            # solver); it is recorded for that image and must not stop the others.
            except Exception as err:
                reason = f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"
                failures.append({"id": image_id, "error": reason})
                update.update({self.key: None, f"{self.key}_error": reason})
                logger.warning(f"RPR: {image_id} could not be scored: {reason}")
            else:
                logger.info(f"RPR: {image_id} {self.key}={update[self.key]:.6g} (k={k})")
            update[f"{self.key}_ts"] = int(time.time())
            datastore.update_image_info(image_id, update)
        logger.info(
            f"RPR: {len(images)} unlabelled, {skipped} up to date, {executed} scored, "
            f"{len(failures)} failed, model {version}, k={k}, device {device}"
        )
        return {
            "total": len(images),
            "skipped": skipped,
            "executed": executed,
            "latency": round(time.time() - start, 3),
            "failures": failures,
        }

    def preprocess(self, datastore: Datastore, image_id: str, device: str) -> tuple[Tensor, Any]:
        """The image as the task's network sees it, ``(C, *spatial)``, and the task's inferer."""
        task = self.infer_task
        uri = datastore.get_image_uri(image_id)
        data: dict[str, Any] = {**task.config(), "image": uri, "image_path": uri, "device": device}
        data = task.run_pre_transforms(data, task.pre_transforms(data))
        key = getattr(task, "input_key", "image")
        return _as_tensor(data[key], key), task.inferer(data)

    def _score_image(
        self, network: nn.Module, datastore: Datastore, image_id: str, device: str, k: int
    ) -> dict[str, Any]:
        x, inferer = self.preprocess(datastore, image_id, device)
        roi_size, sliding = sliding_options(inferer)
        with eval_mode(network), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)  # stored as {key}_converged
            table = score(
                network,
                x[None],
                k=k,
                tol=self.tol,
                solver=self.solver,
                device=device,
                progress=False,
                config=self.config,
                method=self.method,
                ids=[image_id],
                errors="raise",
                roi_size=roi_size,
                sliding=sliding,
            )
        curve = [float(v) for v in table.rpr_curve[0]]
        return {
            self.key: curve[-1],
            f"{self.key}_curve": curve,
            f"{self.key}_converged": bool(table.converged[0]),
            f"{self.key}_error": None,
        }


@dataclass(frozen=True)
class Proposal:
    """An unlabelled image with a stored score: its id, score, rank (1 = lowest) and info."""

    id: str
    score: float
    rank: int
    info: dict[str, Any]


def ranked_images(
    datastore: Datastore,
    key: str = "rpr",
    label_tag: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Proposal]:
    """The unlabelled images with a finite stored ``key``, lowest first (ties by id)."""
    out = []
    for image_id in datastore.get_unlabeled_images(label_tag, labels):
        info = datastore.get_image_info(image_id)
        value = info.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out.append((float(value), str(image_id), info))
    out.sort(key=lambda t: (t[0], t[1]))
    return [Proposal(i, v, rank + 1, info) for rank, (v, i, info) in enumerate(out)]


class RPRStrategy(Strategy):
    """Serve the unlabelled image with the lowest stored score not served in ``reset`` seconds.

    The score is ``key`` as :class:`RPRScoring` stored it (RPR at rank k: a low RPR means x
    lies near the nullspace of A[x], where the model is likely to fail). MONAI Label's
    active-learning endpoint records when it served an image to a client
    (``info["strategy"][name]["ts"]``); images served within the last ``reset`` seconds are
    passed over, so that two annotators get different images. When every scored image was
    served that recently, the one served longest ago is returned.

    Args:
        key: the stored score to rank by, lowest first.
        reset: seconds after which a served image may be served again.
        description: shown by the clients.
    """

    def __init__(
        self,
        key: str = "rpr",
        reset: float = 3600.0,
        description: str = "Lowest Right Projection Ratio (RPR) first",
    ) -> None:
        super().__init__(description)
        self.key = _check_key(key)
        if isinstance(reset, bool) or not isinstance(reset, int | float) or reset < 0:
            raise ValueError(f"reset must be a number of seconds >= 0, got {reset!r}")
        self.reset = reset

    def __call__(self, request: Mapping[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        """``{"id", key, key + "_rank"}`` of the image to label next, or ``None`` when no
        unlabelled image has a score yet."""
        ranked = ranked_images(datastore, self.key, request.get("label_tag"), request.get("labels"))
        if not ranked:
            return None
        name = str(request.get("strategy", "rpr"))
        now = time.time()

        def served(p: Proposal) -> float:
            return float(p.info.get("strategy", {}).get(name, {}).get("ts", 0))

        fresh = [p for p in ranked if now - served(p) >= self.reset]
        pick = fresh[0] if fresh else min(ranked, key=lambda p: (served(p), p.rank))
        return {"id": pick.id, self.key: pick.score, f"{self.key}_rank": pick.rank}


def propose(
    datastore: Datastore,
    n: int,
    key: str = "rpr",
    *,
    label_tag: str | None = None,
    labels: Sequence[str] | None = None,
    upload_to_cvat: bool = False,
) -> list[dict[str, Any]]:
    """The ``n`` unlabelled images with the lowest stored score, for a batch of annotation.

    Args:
        datastore: the app's datastore, scored by :class:`RPRScoring`.
        n: how many (fewer when fewer are scored).
        key: the stored score, lowest first.
        label_tag, labels: which images count as labelled (MONAI Label's filters).
        upload_to_cvat: send the proposed image files to CVAT as a new annotation task
            through MONAI Label's ``CVATDatastore.upload_to_cvat``.

    Returns:
        ``[{"id", key, key + "_rank", "path"}]``, lowest first.

    Raises:
        TypeError: ``upload_to_cvat`` with a datastore that is not a ``CVATDatastore``.
    """
    n = _positive_int("n", n)
    if upload_to_cvat:
        from monailabel.datastore.cvat import CVATDatastore

        if not isinstance(datastore, CVATDatastore):
            raise TypeError(
                f"upload_to_cvat needs a monailabel CVATDatastore, got {type(datastore).__name__}"
            )
    chosen = ranked_images(datastore, _check_key(key), label_tag, labels)[:n]
    out = [
        {"id": p.id, key: p.score, f"{key}_rank": p.rank, "path": datastore.get_image_uri(p.id)}
        for p in chosen
    ]
    if upload_to_cvat and out:
        datastore.upload_to_cvat([p["path"] for p in out])  # type: ignore[attr-defined]
    return out
