"""``rprselect bench failure-prediction``: does a score point at the samples a model gets wrong?

A model is trained (or loaded with ``--weights``, ``torch.load(..., weights_only=True)``) and a
labelled test set is scored with :func:`rprselect.score` (k = 10 by default). Every acquisition
utility of :mod:`rprselect.acquisition` (higher = more suspicious) is then judged as a failure
predictor, together with the paper's RPR at every rank 1..k and the rank mean:

- classification (``digits``, ``mnist``, ``npz:PATH``): AUROC for "the model is wrong here",
  with a percentile-bootstrap 95% interval and the paired difference to max-softmax, and the error
  enrichment among the 10% most suspicious samples (their error rate over the base rate);
- segmentation (``brats`` slices and volumes, ``pngseg:DIR``): Spearman's ρ between the
  confidence :math:`-u` and the Dice (for ``lowest`` this is Spearman(RPR, Dice)) with its
  p-value, pooled and within each fold's model; the paper's Table 2 (mean Dice per RPR quantile);
  AUROC for "Dice in the worst quartile"; the mean Dice of the 10% most suspicious samples.

Scores that need labelled statistics (class-conditional RPR, ViM's scale) are calibrated on a
labelled reference set held out of training (the validation split), never on the test set.
Segmentation scores from per-pixel logits (margin, entropy, max-softmax, max-logit, energy) are
averaged over the pixels of the unpadded sample; ``output_input_ratio`` is
:math:`-\\|f(x)\\|/\\|x\\|` over the whole output; ``jacobian_frobenius`` a Hutchinson estimate.

Outputs under ``--out``: ``results.json``, ``report.md``, ``roc.png`` (classification) or
``roc_worst_quartile.png`` and ``score_vs_dice.png`` (segmentation); ``models/*.pt`` and
``units/*.npz`` make a rerun resume (finished units are not scored again).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from rprselect.benchmarks.common import machine_description, out_dir, write_json
from rprselect.benchmarks.failure_sources import Unit, classification_unit, segmentation_units

__all__ = ["add_arguments", "run", "main", "evaluate_unit", "score_names"]

#: per-data defaults; ``--quick`` shrinks everything (explicit options override both)
DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(epochs=20, rare=(1, 9), rare_keep=0.03, test_subset=0, ref_subset=0),
    "mnist": dict(epochs=8, rare=(1, 9), rare_keep=0.01, test_subset=0, ref_subset=2000),
    "npz": dict(epochs=10, rare=(), rare_keep=1.0, test_subset=0, ref_subset=2000),
    "pngseg": dict(epochs=30, depth=3, filters=8),
}
QUICK: dict[str, Any] = dict(epochs=2, test_subset=200, ref_subset=100, n_boot=200, probes=2)
_PIXEL = ("margin", "entropy", "max_softmax", "max_logit", "energy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rprselect bench failure-prediction``."""
    a = parser.add_argument
    a("--data", default="digits", help="digits, mnist, brats, npz:PATH or pngseg:DIR")
    a("--out", type=Path, default=Path("out/failure_prediction"), help="output folder")
    a(
        "--weights",
        type=Path,
        default=None,
        help="state dict to load instead of training (brats: a `bench brats` output folder)",
    )
    a("--data-dir", type=Path, default=None, help="MNIST or BraTS folder (default: shared data)")
    a("--k", type=int, default=10, help="singular triplets per sample (default 10)")
    a("--tol", type=float, default=1e-4, help="relative SVD tolerance (default 1e-4)")
    a("--epochs", type=int, default=None, help="training epochs (default per data set)")
    a("--rare", default=None, help="classes thinned in training, e.g. 1,9 or none")
    a("--rare-keep", type=float, default=None, help="fraction of each rare class kept")
    a("--test-subset", type=int, default=None, help="score only this many test samples")
    a("--ref-subset", type=int, default=None, help="labelled reference samples (calibration)")
    a(
        "--default-score",
        default=None,
        help="the score the target compares to max-softmax (default: select's DEFAULT_STRATEGY)",
    )
    a("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    a("--probes", type=int, default=8, help="Hutchinson probes of jacobian_frobenius")
    a("--level", choices=("slices", "volumes", "both"), default="both", help="brats level")
    a("--downsample", type=int, default=1, help="pngseg: block-average factor")
    a("--tile", type=int, default=None, help="pngseg: cut T x T tiles")
    a("--invert-label", action="store_true", help="pngseg: foreground is the dark label")
    a("--quick", action="store_true", help="a tiny run in well under a minute")
    a("--threads", type=int, default=1, help="torch threads (default 1)")
    a("--seed", type=int, default=0)  # fmt: skip


def _kind(data: str) -> str:
    head = data.split(":", 1)[0]
    if data in ("digits", "mnist") or (head == "npz" and ":" in data):
        return "classification"
    if data == "brats" or (head == "pngseg" and ":" in data):
        return "segmentation"
    raise ValueError(f"--data must be digits, mnist, brats, npz:PATH or pngseg:DIR, got {data!r}")


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Settings of this run from the per-data defaults, ``--quick`` and explicit options."""
    kind = _kind(args.data)
    head = args.data.split(":", 1)[0]
    s: dict[str, Any] = dict(kind=kind, data=args.data, k=args.k, tol=args.tol, quick=args.quick)
    if head == "brats":
        from rprselect.benchmarks.brats import PRESETS

        s.update(PRESETS["quick" if args.quick else "cpu"], preset="quick" if args.quick else "cpu")
        s["k"], s["tol"] = (PRESETS["quick"]["k"], PRESETS["quick"]["tol"]) if args.quick else (
            args.k, args.tol)  # fmt: skip
    else:
        s.update(DEFAULTS[head])
    if args.quick:
        s.update({key: v for key, v in QUICK.items() if key in s or key in ("n_boot", "probes")})
    s.setdefault("n_boot", args.n_boot)
    s.setdefault("probes", args.probes)
    for key in ("epochs", "rare_keep", "test_subset", "ref_subset"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.rare is not None:
        try:
            s["rare"] = () if args.rare in ("", "none") else tuple(map(int, args.rare.split(",")))
        except ValueError:
            raise ValueError(
                f"--rare must be class indices like 1,9 or none, got {args.rare!r}"
            ) from None
    for key, low in (("k", 1), ("epochs", 1), ("n_boot", 10), ("probes", 1)):
        if s.get(key) is not None and s[key] < low:
            raise ValueError(f"--{key.replace('_', '-')} must be >= {low}, got {s[key]}")
    if not s["tol"] > 0:
        raise ValueError(f"--tol must be > 0, got {s['tol']}")
    w = args.weights
    if w is not None and head == "brats" and not (w / "splits.json").is_file():
        raise ValueError(f"--weights for brats must be a `bench brats` output folder, got {w}")
    if w is not None and head != "brats" and not w.is_file():
        raise ValueError(f"--weights must be a state-dict file, got {w} (not a file)")
    return s


def score_names(kind: str, k: int) -> list[str]:
    """The scores judged, in report order: the SVD's, the SVD-free controls, the fusions."""
    svd = ["lowest", *(f"rpr@{r}" for r in range(1, k)), "rank_mean"]
    if kind == "classification":
        return ["random", *svd, "class_conditional", "margin", "entropy", "max_softmax",
                "max_logit", "energy", "output_input_ratio", "jacobian_frobenius",
                "margin_rpr", "rank_entropy", "vim"]  # fmt: skip
    return ["random", *svd, *_PIXEL, "output_input_ratio", "jacobian_frobenius"]


def _utility(name: str, table: Any, **kw: Any) -> np.ndarray:
    from rprselect.acquisition import lowest
    from rprselect.registry import utility_of

    if name.startswith("rpr@"):
        return lowest(table, int(name[4:]))
    return utility_of(name, table, **kw)


@torch.no_grad()
def _logits(model: nn.Module, X: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([model(X[i : i + batch]) for i in range(0, len(X), batch)])


def _score(model: nn.Module, pool: Any, s: dict[str, Any], **kw: Any) -> Any:
    import rprselect

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rprselect.NotConvergedWarning)
        return rprselect.score(model, pool, k=s["k"], tol=s["tol"], progress=False, **kw)


def _classification(unit: Unit, s: dict[str, Any], seed: int) -> dict[str, Any]:
    from rprselect.acquisition import Labelled

    net = copy.deepcopy(unit.model).double().eval()  # exact dense SVD of the float64 A[x]
    X, R = unit.x.double(), unit.ref_x.double()  # type: ignore[union-attr]
    table, ref = _score(net, X, s), _score(net, R, s)
    z, zr = _logits(net, X), _logits(net, R)
    xn, xr = X.flatten(1).norm(dim=1).numpy(), R.flatten(1).norm(dim=1).numpy()
    lab = Labelled(np.asarray(unit.ref_y), ref.rpr_curve, zr.numpy(), xr)
    kw = dict(logits=z.numpy(), x_norm=xn, labelled=lab, rng=seed)
    jac = {"model": net, "X": X, "n_probes": s["probes"], "seed": seed}
    utils = {
        name: _utility(name, table, **kw, params=jac if name == "jacobian_frobenius" else None)
        for name in score_names("classification", s["k"])
    }
    wrong = (z.argmax(1) != unit.target).numpy()
    return dict(utilities=utils, wrong=wrong, rpr_curve=table.rpr_curve, converged=table.converged)


class _Volumes(torch.utils.data.Dataset[Tensor]):
    """A list of volumes of different shapes as a pool (scored one at a time)."""

    def __init__(self, volumes: Sequence[Tensor]) -> None:
        self.volumes = list(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> Tensor:
        return self.volumes[i]


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred > 0, gt > 0
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def _pixel_scores(z: Tensor, crop: tuple[int, ...]) -> dict[str, float]:
    """Per-pixel logit scores of one sample ``(C, *spatial)``, averaged over the crop."""
    from rprselect import acquisition as A

    inside = z[(slice(None), *(slice(0, c) for c in crop))].reshape(z.shape[0], -1).T.double()
    return {name: float(getattr(A, name)(inside.numpy()).mean()) for name in _PIXEL}


def _segmentation(unit: Unit, s: dict[str, Any], seed: int) -> dict[str, Any]:
    from rprselect.sliding import sliding_window_operator

    net, crops = unit.model.float().eval(), unit.crop or []
    volumes = unit.roi_size is not None
    kw: dict[str, Any] = dict(solver="lanczos")
    if volumes:
        kw.update(roi_size=unit.roi_size, sliding={"overlap": 0.25, "mode": "constant"})
    table = _score(net, _Volumes(unit.x) if volumes else unit.x, s, **kw)
    utils: dict[str, list[float]] = {n: [] for n in (*_PIXEL, "output_input_ratio")}
    hutch: list[float] = []
    dice: list[float] = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(len(unit.ids)):
        x = unit.x[i]
        if volumes:  # logits and the Hutchinson probes go through the stitched operator
            roi = cast(tuple[int, ...], unit.roi_size)
            op = sliding_window_operator(net, x, roi, overlap=0.25, mode="constant")
            z = cast(Tensor, op.output).detach()
            probes = torch.randint(0, 2, (s["probes"], *x.shape), generator=gen) * 2 - 1
            with torch.no_grad():
                hutch.append(-float(op.matmat(probes.float()).flatten(1).pow(2).sum(1).mean()))
        else:
            with torch.no_grad():
                z = net(x[None])[0]
        for name, v in _pixel_scores(z, crops[i]).items():
            utils[name].append(v)
        utils["output_input_ratio"].append(-float(z.norm() / x.norm()))
        pred = z.argmax(0)[tuple(slice(0, c) for c in crops[i])].numpy()
        dice.append(_dice(pred, unit.target[i]))
    out = {name: np.asarray(v) for name, v in utils.items()}
    from rprselect.acquisition import lowest, rank_mean
    from rprselect.registry import utility_of

    out["random"] = utility_of("random", table, rng=seed)
    out["lowest"], out["rank_mean"] = lowest(table), rank_mean(table)
    for r in range(1, s["k"]):
        out[f"rpr@{r}"] = lowest(table, r)
    if volumes:
        out["jacobian_frobenius"] = np.asarray(hutch)
    else:
        jac = {"model": net, "X": unit.x, "n_probes": s["probes"], "seed": seed}
        out["jacobian_frobenius"] = utility_of("jacobian_frobenius", table, params=jac)
    fg = np.array([bool(np.any(np.asarray(m) > 0)) for m in unit.target])
    order = score_names("segmentation", s["k"])
    return dict(
        utilities={n: out[n] for n in order}, dice=np.asarray(dice), has_fg=fg,
        rpr_curve=table.rpr_curve, converged=table.converged,
    )  # fmt: skip


def evaluate_unit(unit: Unit, s: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Scores and outcomes of one unit: ``utilities`` (name -> ``(N,)``), then ``wrong`` or
    ``dice`` and ``has_fg``, the ``rpr_curve`` and ``converged`` of the SVDs."""
    if unit.kind == "classification":
        return _classification(unit, s, seed)
    return _segmentation(unit, s, seed)


def _save(path: Path, res: dict[str, Any]) -> None:
    flat = {f"u:{k}": v for k, v in res["utilities"].items()}
    flat.update({k: v for k, v in res.items() if k != "utilities"})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **flat)
    tmp.replace(path)


def _load(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        res: dict[str, Any] = {k: z[k] for k in z.files if not k.startswith("u:")}
        res["utilities"] = {k[2:]: z[k] for k in z.files if k.startswith("u:")}
    return res


def _run(args: argparse.Namespace, s: dict[str, Any], out: Path) -> int:
    from rprselect.benchmarks import failure_report as rep
    from rprselect.benchmarks.failure_plots import plot

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    units_dir = out_dir(out / "units")
    with tempfile.TemporaryDirectory() as tmp:
        if s["kind"] == "classification":
            units = [classification_unit(args, s, out)]
        else:
            units = segmentation_units(args, s, out, Path(tmp))
    seconds["data and models"] = time.perf_counter() - t0
    results: dict[str, Any] = {}
    reused: list[str] = []
    for unit in units:
        path = units_dir / f"{unit.name}.npz"
        t1 = time.perf_counter()
        if path.is_file():
            print(f"[{unit.name}] reusing {path}", flush=True)
            results[unit.name] = _load(path)
            reused.append(unit.name)
        else:
            results[unit.name] = evaluate_unit(unit, s, args.seed)
            results[unit.name]["seconds"] = np.float64(time.perf_counter() - t1)
            _save(path, results[unit.name])
        seconds[f"score {unit.name}"] = float(results[unit.name].get("seconds", np.nan))
        print(f"[{unit.name}] {len(unit.ids)} samples, {seconds[f'score {unit.name}']:.1f} s",
              flush=True)  # fmt: skip
    summary = rep.summarise(units, results, s, args.default_score, args.seed)
    figures = plot(out, units, results, s, args.default_score)
    seconds["total"] = time.perf_counter() - t0
    payload = {
        "settings": {**s, "seed": args.seed, "default_score": args.default_score},
        "machine": machine_description("cpu"),
        "units": {u.name: {"n": len(u.ids), **u.info} for u in units},
        "summary": summary,
        "figures": figures,
        "seconds": seconds,
        "reused_units": reused,
    }
    write_json(out / "results.json", payload)
    text = rep.markdown(payload)
    (out / "report.md").write_text(text)
    print(text.split("\n", 2)[2] if text.count("\n") > 2 else text)
    return 0


def library_default() -> str:
    """``rprselect.select.DEFAULT_STRATEGY`` when it names a score, else the paper's ``lowest``."""
    from rprselect.acquisition import ACQUISITIONS

    try:
        from rprselect.select import DEFAULT_STRATEGY
    except ImportError:
        return "lowest"
    return DEFAULT_STRATEGY if DEFAULT_STRATEGY in ACQUISITIONS else "lowest"


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed ``args``; returns the exit status."""
    try:
        s = resolve(args)
        from rprselect.acquisition import ACQUISITIONS

        if args.default_score is None:
            args.default_score = library_default()
        if args.default_score not in ACQUISITIONS and not args.default_score.startswith("rpr@"):
            raise ValueError(
                f"--default-score must be one of {sorted(ACQUISITIONS)} or rpr@R, "
                f"got {args.default_score!r}"
            )
    except ValueError as err:
        print(f"failure-prediction: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        return _run(args, s, out_dir(args.out))
    except (FileNotFoundError, ValueError) as err:
        print(f"failure-prediction: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rprselect.benchmarks.failure_prediction [options]``."""
    parser = argparse.ArgumentParser(prog="rprselect bench failure-prediction", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
