"""Acquisitions by name: :data:`ACQUISITIONS` and :func:`acquire`.

One function that ``select``, the modAL adapter, the benchmarks and the CLI call by name::

    idx = acquire("margin_rpr", table, 10, logits=z, params={"gamma": 1.0})

A name is a utility from :mod:`rprselect.scores`; ``batch`` says how the batch is formed from
it: ``"top"`` (the ``n`` highest), ``"stratified"`` (:func:`~rprselect.batches.stratified_batch`,
by the predicted class ``argmax(logits)``) or ``"power"``
(:func:`~rprselect.batches.power_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import scores as S
from .batches import _best_first, _rng, check_n, check_utility, power_batch, stratified_batch

__all__ = ["Labelled", "Acquisition", "ACQUISITIONS", "Preset", "PRESETS", "acquire", "utility_of"]


@dataclass(frozen=True)
class Labelled:
    """What some acquisitions need to know about the labelled set.

    Attributes:
        y: ``(M,)`` the labels (class indices).
        rpr_curve: ``(M, k)`` their RPR curves (``class_conditional``, ``vim``), or ``None``.
        logits: ``(M, C)`` the model's outputs on them (``vim``'s calibration), or ``None``.
        x_norm: ``(M,)`` their input norms (``vim``'s calibration), or ``None``.
    """

    y: np.ndarray
    rpr_curve: np.ndarray | None = None
    logits: np.ndarray | None = None
    x_norm: np.ndarray | None = None

    def counts(self, n_classes: int) -> np.ndarray:
        """Labelled samples per class, ``(n_classes,)``."""
        y = np.asarray(self.y, dtype=np.int64)
        return np.bincount(y, minlength=n_classes)[:n_classes]


@dataclass(frozen=True)
class _Context:
    table: Any
    logits: Any
    x_norm: Any
    labelled: Labelled | None
    rng: np.random.Generator
    n: int


@dataclass(frozen=True)
class Acquisition:
    """A named utility: ``needs`` lists the inputs it reads, ``fn(ctx, **params)`` computes it."""

    name: str
    needs: tuple[str, ...]
    fn: Callable[..., np.ndarray]
    formula: str


def _need(ctx: _Context, what: str, name: str) -> Any:
    if what == "labelled_rpr":
        if ctx.labelled is None or ctx.labelled.rpr_curve is None:
            raise ValueError(f"acquisition {name!r} needs labelled=Labelled(y, rpr_curve=...)")
        return ctx.labelled
    value = getattr(ctx, what)
    if value is None:
        raise ValueError(f"acquisition {name!r} needs {what}=..., got None")
    return value


def _pred(ctx: _Context, name: str) -> np.ndarray:
    return np.asarray(S.check_logits(_need(ctx, "logits", name)).argmax(1))


def _class_conditional(ctx: _Context, r: int | None = None) -> np.ndarray:
    lab = _need(ctx, "labelled_rpr", "class_conditional")
    return S.class_conditional(ctx.table, _pred(ctx, "class_conditional"), lab.rpr_curve, lab.y, r)


def _vim(ctx: _Context, alpha: float | None = None, r: int | None = None) -> np.ndarray:
    z, xn = _need(ctx, "logits", "vim"), _need(ctx, "x_norm", "vim")
    if alpha is None:
        lab = _need(ctx, "labelled_rpr", "vim")
        if lab.logits is None or lab.x_norm is None:
            raise ValueError("acquisition 'vim' without alpha needs labelled logits and x_norm")
        alpha = S.calibrate_vim_alpha(lab.logits, lab.rpr_curve, lab.x_norm, r)
    return S.vim(z, ctx.table, xn, alpha, r)


def _mk(
    name: str, needs: tuple[str, ...], fn: Callable[..., np.ndarray], formula: str
) -> Acquisition:
    return Acquisition(name, needs, fn, formula)


#: Every acquisition :func:`acquire` knows, by name.
ACQUISITIONS: dict[str, Acquisition] = {
    a.name: a
    for a in (
        _mk("random", (), lambda c: c.rng.random(c.n), "u ~ U(0, 1)"),
        _mk("lowest", ("table",), lambda c, r=None: S.lowest(c.table, r), "-RPR(x; r)"),
        _mk(
            "rank_mean",
            ("table",),
            lambda c, r_max=None: S.rank_mean(c.table, r_max),
            "-mean_{r<=r_max} RPR(x; r)",
        ),
        _mk(
            "class_conditional",
            ("table", "logits", "labelled"),
            _class_conditional,
            "1 - percentile of RPR among labelled of the predicted class",
        ),
        _mk("margin", ("logits",), lambda c: S.margin(c.logits), "-(p1 - p2)"),
        _mk("entropy", ("logits",), lambda c: S.entropy(c.logits), "H[p]"),
        _mk("max_softmax", ("logits",), lambda c: S.max_softmax(c.logits), "-max p"),
        _mk("max_logit", ("logits",), lambda c: S.max_logit(c.logits), "-max z"),
        _mk(
            "energy",
            ("logits",),
            lambda c, temperature=1.0: S.energy(c.logits, temperature),
            "-T logsumexp(z/T)",
        ),
        _mk(
            "output_input_ratio",
            ("logits", "x_norm"),
            lambda c: S.output_input_ratio(c.logits, c.x_norm),
            "-||f(x)||/||x||",
        ),
        _mk(
            "jacobian_frobenius",
            ("model", "X"),
            lambda c, model, X, n_probes=8, seed=0: S.jacobian_frobenius(model, X, n_probes, seed),
            "-Hutchinson ||A[x]||_F^2",
        ),
        _mk(
            "margin_rpr",
            ("table", "logits"),
            lambda c, gamma=1.0, r=None: S.margin_rpr(c.logits, c.table, gamma, r),
            "(1 - (p1 - p2)) (1 - RPR(x; r))^gamma",
        ),
        _mk(
            "rank_entropy",
            ("table", "logits"),
            lambda c, r=None: S.rank_entropy(c.table, c.logits, r),
            "mean of the ranks of 1 - RPR and H[p]",
        ),
        _mk(
            "vim",
            ("table", "logits", "x_norm"),
            _vim,
            "alpha ||x|| sqrt(1 - RPR(x; r)) - logsumexp(z)",
        ),
    )
}


@dataclass(frozen=True)
class Preset:
    """A named acquisition with its parameters and batch mode (the benchmark's names).

    Attributes:
        acquisition: a key of :data:`ACQUISITIONS`.
        params: the score's parameters, as ``((name, value), ...)``.
        batch: ``"top"``, ``"stratified"`` or ``"power"``.
        transform: power sampling's ``"rank"`` or ``"min"``.
    """

    acquisition: str
    params: tuple[tuple[str, Any], ...] = ()
    batch: str = "top"
    transform: str = "rank"


def _kw(**kw: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kw.items()))


#: Named combinations, as the active-learning benchmark reports them; :func:`acquire` and
#: :func:`rprselect.select` accept these names as well as those of :data:`ACQUISITIONS`.
PRESETS: dict[str, Preset] = {
    "least_confidence": Preset("max_softmax"),
    "power_margin": Preset("margin", batch="power", transform="min"),
    "power_margin_rank": Preset("margin", batch="power", transform="rank"),
    "margin_strat": Preset("margin", batch="stratified"),
    "ratio": Preset("output_input_ratio"),
    "hutchinson": Preset("jacobian_frobenius", _kw(n_probes=8)),
    **{f"lowest_r{r}": Preset("lowest", _kw(r=r)) for r in range(2, 7)},
    **{f"lowest_r{r}_strat": Preset("lowest", _kw(r=r), "stratified") for r in (2, 3, 4)},
    "rank_mean_r6": Preset("rank_mean", _kw(r_max=6)),
    "class_cond": Preset("class_conditional"),
    **{f"class_cond_r{r}": Preset("class_conditional", _kw(r=r)) for r in (2, 4)},
    "class_cond_strat": Preset("class_conditional", batch="stratified"),
    **{
        f"margin_rpr_g{g}": Preset("margin_rpr", _kw(gamma=float(g.replace("p", "."))))
        for g in ("0p5", "1", "2")
    },
    "margin_rpr_g1_r3": Preset("margin_rpr", _kw(gamma=1.0, r=3)),
    "margin_rpr_strat": Preset("margin_rpr", _kw(gamma=1.0), "stratified"),
    "margin_rpr_power": Preset("margin_rpr", _kw(gamma=1.0), "power", "min"),
    "vim_r4": Preset("vim", _kw(r=4)),
}


def preset_of(name: str) -> Preset:
    """The :class:`Preset` called ``name``: a preset, or an acquisition with a top-n batch.

    Raises:
        ValueError: an unknown name.
    """
    if name in PRESETS:
        return PRESETS[name]
    if name in ACQUISITIONS:
        return Preset(name)
    raise ValueError(
        f"strategy must be one of {sorted(set(ACQUISITIONS) | set(PRESETS))}, got {name!r}"
    )


def _from_table(table: Any, logits: Any, x_norm: Any) -> tuple[Any, Any]:
    """Default ``logits`` and ``x_norm`` to the columns a ScoreTable may carry."""
    if logits is None and getattr(table, "logits", None) is not None:
        logits = table.logits  # a ScoreTable that kept the model's outputs
    if x_norm is None and getattr(table, "input_norm", None) is not None:
        norms = np.asarray(table.input_norm, dtype=np.float64)
        x_norm = None if np.isnan(norms).any() else norms
    return logits, x_norm


def utility_of(
    name: str,
    table: Any = None,
    *,
    logits: Any = None,
    x_norm: Any = None,
    labelled: Labelled | None = None,
    rng: np.random.Generator | int | None = None,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The ``(N,)`` utility of acquisition ``name`` (see :func:`acquire` for the arguments)."""
    if not isinstance(name, str) or name not in ACQUISITIONS:
        raise ValueError(f"name must be one of {sorted(ACQUISITIONS)}, got {name!r}")
    logits, x_norm = _from_table(table, logits, x_norm)
    if labelled is not None and not isinstance(labelled, Labelled):
        raise TypeError(f"labelled must be a Labelled or None, got {type(labelled).__name__}")
    if table is not None:
        N = len(S.curve_of(table))
    elif logits is not None:
        N = len(S.check_logits(logits))
    elif params and "X" in params:
        N = len(params["X"])
    else:
        raise ValueError(f"acquisition {name!r} needs table or logits to know the pool size")
    ctx = _Context(table, logits, x_norm, labelled, _rng(rng), N)
    acq = ACQUISITIONS[name]
    for what in acq.needs:
        if what in ("table", "logits", "x_norm"):
            _need(ctx, what, name)
    try:
        u = acq.fn(ctx, **dict(params or {}))
    except TypeError as err:
        if "argument" in str(err):
            raise TypeError(f"params of acquisition {name!r} are invalid: {err}") from err
        raise
    u = check_utility(u, f"the utility of {name!r}")
    if len(u) != N:
        raise ValueError(f"inputs of {name!r} disagree: {len(u)} scores for a pool of {N}")
    return u


def acquire(
    name: str,
    table: Any,
    n: int,
    *,
    logits: Any = None,
    x_norm: Any = None,
    labelled: Labelled | None = None,
    rng: np.random.Generator | int | None = None,
    batch: str | None = None,
    T: float = 1.0,
    transform: str | None = None,
    **params: Any,
) -> np.ndarray:
    """Positions (rows of ``table``/``logits``) of the ``n`` samples acquisition ``name`` picks.

    Args:
        name: a key of :data:`ACQUISITIONS` or of :data:`PRESETS` (which fixes the score's
            parameters, batch and transform unless given here).
        table: a ScoreTable or ``(N, k)`` RPR curves (``None`` for scores without RPR).
        n: batch size, ``1 <= n <= N``.
        logits: ``(N, C)`` model outputs on the same rows (default: ``table.logits`` when the
            ScoreTable kept them).
        x_norm: ``(N,)`` input norms (default: ``table.input_norm`` when known).
        labelled: statistics of the labelled set (:class:`Labelled`).
        rng: Generator or seed for ties and stochastic batches (``None``: seed 0).
        batch: ``"top"`` (default), ``"stratified"`` (needs ``logits``; without ``labelled`` every
            class counts 0 labels, so the quotas are equal) or ``"power"``.
        T: power temperature; transform: power's ``"rank"`` (default) or ``"min"``.
        **params: the score's own parameters (``r``, ``r_max``, ``gamma``, ``alpha``, ...).

    Returns:
        ``(n,)`` int64 positions.

    Raises:
        ValueError: unknown name or batch, missing inputs, NaN scores, ``n`` out of range.
        TypeError: a bad parameter or argument type.
    """
    gen = _rng(rng)
    if isinstance(name, str) and name in PRESETS:
        pre = PRESETS[name]
        name, params = pre.acquisition, {**dict(pre.params), **params}
        batch, transform = batch or pre.batch, transform or pre.transform
    batch, transform = batch or "top", transform or "rank"
    logits, x_norm = _from_table(table, logits, x_norm)
    u = utility_of(
        name, table, logits=logits, x_norm=x_norm, labelled=labelled, rng=gen, params=params
    )
    n = check_n(n, len(u))
    if batch == "top":
        return _best_first(u, gen)[:n].astype(np.int64)
    if batch == "power":
        return power_batch(u, n, T, gen, transform=transform)  # type: ignore[arg-type]
    if batch == "stratified":
        if logits is None:
            raise ValueError("batch='stratified' needs logits= (the predicted classes)")
        z = S.check_logits(logits, len(u))
        counts = labelled.counts(z.shape[1]) if labelled is not None else np.zeros(z.shape[1])
        return stratified_batch(u, z.argmax(1), counts, n, gen)
    raise ValueError(f"batch must be 'top', 'stratified' or 'power', got {batch!r}")
