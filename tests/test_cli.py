"""Tests of the command line: every input kind, checkpoints, bundles, errors, select, bench."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_models import (  # noqa: F401
    tiny_cnn,
    tiny_cnn3d,
    tiny_cnn_rgb,
    tiny_mlp,
    tiny_seg3d,
)

from rprselect import benchmarks
from rprselect.cli import main
from rprselect.pool import load_pool
from rprselect.scoring import ScoreTable, score

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32) + 0.05


def _write(folder: Path, kind: str, n: int = 4) -> tuple[str, np.ndarray]:
    """Files of one kind; returns the model spec and the arrays as the pool reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nii.gz":
        nib = pytest.importorskip("nibabel")
        X = _images(n, (8, 8, 8))
        for i, x in enumerate(X):
            nib.Nifti1Image(x, np.eye(4)).to_filename(str(folder / f"vol{i}.nii.gz"))
        return "cli_models:tiny_cnn3d", X[:, None]
    if kind == "png":
        Image = pytest.importorskip("PIL.Image")
        raw = (np.random.default_rng(0).random((n, 8, 8)) * 250 + 5).astype(np.uint8)
        for i, x in enumerate(raw):
            Image.fromarray(x, mode="L").save(folder / f"img{i}.png")
        return "cli_models:tiny_cnn", raw[:, None].astype(np.float32) / 255
    if kind == "rgb.png":
        Image = pytest.importorskip("PIL.Image")
        raw = (np.random.default_rng(0).random((n, 8, 8, 4)) * 250 + 5).astype(np.uint8)
        for i, x in enumerate(raw):
            Image.fromarray(x, mode="RGBA").save(folder / f"img{i}.png")
        return "cli_models:tiny_cnn_rgb", np.moveaxis(raw[..., :3], -1, 1).astype(np.float32) / 255
    X = _images(n, (1, 8, 8))
    for i, x in enumerate(X):
        if kind == "npy":
            np.save(folder / f"a{i}.npy", x if i % 2 else x[0])  # (8, 8) gains a channel
        else:
            np.savez(folder / f"a{i}.npz", other=np.zeros(3), image=x)
    return "cli_models:tiny_cnn", X


def _factory(spec: str) -> torch.nn.Module:
    return {
        "cli_models:tiny_cnn": tiny_cnn,
        "cli_models:tiny_cnn3d": tiny_cnn3d,
        "cli_models:tiny_cnn_rgb": tiny_cnn_rgb,
    }[spec]()


@pytest.mark.parametrize("kind", ["npy", "npz", "png", "rgb.png", "nii.gz"])
def test_score_each_input_kind(kind: str, tmp_path: Path, capsys) -> None:
    spec, X = _write(tmp_path / "pool", kind)
    out = tmp_path / "scores.csv"
    rc = main(
        [
            "score",
            "--model",
            spec,
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--k",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert f"scored {len(X)} samples" in capsys.readouterr().out
    t = ScoreTable.from_csv(out)
    assert (np.diff(t.rpr) >= 0).all(), "the CSV is ranked by ascending RPR"
    want = score(
        _factory(spec),
        torch.from_numpy(X),
        k=3,
        progress=False,
        ids=load_pool(tmp_path / "pool").ids,
    )
    got = {i: r for i, r in zip(t.ids, t.rpr_curve, strict=True)}
    assert sorted(got) == sorted(want.ids)
    for sid, curve in zip(want.ids, want.rpr_curve, strict=True):
        np.testing.assert_allclose(got[sid], curve, rtol=1e-5, atol=1e-7, err_msg=sid)


def test_glob_pool(tmp_path: Path) -> None:
    _write(tmp_path / "pool", "npz")
    pool = load_pool(str(tmp_path / "pool" / "a[12].npz"))
    assert pool.ids == ["a1.npz", "a2.npz"]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        load_pool(str(tmp_path / "pool" / "*.nii"))


def test_corrupt_nifti_is_reported_and_the_rest_scored(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "pool", "nii.gz", n=3)
    good = (tmp_path / "pool" / "vol0.nii.gz").read_bytes()
    (tmp_path / "pool" / "broken.nii.gz").write_bytes(good[: len(good) // 2])
    out = tmp_path / "s.csv"
    rc = main(
        [
            "score",
            "--model",
            "cli_models:tiny_cnn3d",
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--k",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err  # a sample failed: the other scores are written, the exit code says so
    assert sorted(ScoreTable.from_csv(out).ids) == ["vol0.nii.gz", "vol1.nii.gz", "vol2.nii.gz"]
    assert "broken.nii.gz" in err and "could not be scored, listed in" in err
    assert "ScoreTable.failures" not in err
    failures = (tmp_path / "s.failures.csv").read_text()
    assert "broken.nii.gz" in failures


def test_nan_volume_names_the_file(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "pool", "npy")
    bad = np.ones((1, 8, 8), np.float32)
    bad[0, 2, 2] = np.nan
    np.save(tmp_path / "pool" / "zz_nan.npy", bad)
    with pytest.warns(UserWarning, match=r"zz_nan\.npy: holds NaN or Inf"):
        t = score(tiny_cnn(), load_pool(tmp_path / "pool"), k=2, progress=False)
    assert len(t) == 4 and [f.id for f in t.failures] == ["zz_nan.npy"]
    rc = main(
        [
            "score",
            "--model",
            "cli_models:tiny_cnn",
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(tmp_path / "s.csv"),
            "--k",
            "2",
            "--no-progress",
            "--allow-failures",
        ]
    )
    assert rc == 0 and "zz_nan.npy" in capsys.readouterr().err


def test_weights_are_loaded(tmp_path: Path, capsys) -> None:
    spec, X = _write(tmp_path / "pool", "npz")
    model = tiny_cnn()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.linspace(0.5, 1.5, p.numel()).reshape(p.shape))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "s.csv"
    assert (
        main(
            [
                "score",
                "--model",
                spec,
                "--weights",
                str(tmp_path / "w.pt"),
                "--pool",
                str(tmp_path / "pool"),
                "--out",
                str(out),
                "--k",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    t = ScoreTable.from_csv(out)
    want = score(
        model, torch.from_numpy(X), k=3, progress=False, ids=load_pool(tmp_path / "pool").ids
    ).ranked()
    assert t.ids == want.ids
    np.testing.assert_allclose(t.rpr, want.rpr, rtol=1e-5)


class Pickled:
    pass


def _one_error_line(err: str) -> str:
    """The one error line of ``err`` (warnings printed before the error are allowed)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("rprselect: warn")]
    assert len(lines) == 1, err
    assert lines[0].startswith("rprselect: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_checkpoint_failing_weights_only_is_refused(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "pool", "npy")
    torch.save({"weights": tiny_cnn().state_dict(), "extra": Pickled()}, tmp_path / "bad.pt")
    rc = main(
        [
            "score",
            "--model",
            "cli_models:tiny_cnn",
            "--weights",
            str(tmp_path / "bad.pt"),
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "weights_only=True" in line and "unsafe loading is not attempted" in line
    assert "Pickled" in line
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cli_models:tiny_cnn", "--pool", "{tmp}/missing"], "neither a folder"),
        (["--model", "cli_models", "--pool", "{tmp}/pool"], "package.module:factory"),
        (["--model", "no_such_module_xyz:f", "--pool", "{tmp}/pool"], "cannot import"),
        (["--model", "cli_models:nope", "--pool", "{tmp}/pool"], "has no attribute"),
        (["--model", "cli_models:NOT_A_FACTORY", "--pool", "{tmp}/pool"], "must return a torch"),
        (["--model", "cli_models:tiny_cnn", "--pool", "{tmp}/pool", "--k", "9"], "k must satisfy"),
        (
            ["--model", "cli_models:tiny_cnn", "--pool", "{tmp}/pool", "--weights", "{tmp}/no.pt"],
            "does not exist",
        ),
        (
            ["--model", "cli_models:tiny_cnn", "--pool", "{tmp}/pool", "--roi-size", "8,x"],
            "--roi-size must be integers",
        ),
    ],
)
def test_user_errors_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    _write(tmp_path / "pool", "npy")
    args = [a.format(tmp=tmp_path) for a in argv]
    rc = main(["score", *args, "--out", str(tmp_path / "s.csv"), "--no-progress"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line


def test_truncated_checkpoint(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "pool", "npy")
    torch.save(tiny_cnn().state_dict(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[:100])
    rc = main(
        [
            "score",
            "--model",
            "cli_models:tiny_cnn",
            "--weights",
            str(tmp_path / "w.pt"),
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(tmp_path / "s.csv"),
        ]
    )
    assert rc == 2 and "cannot read checkpoint" in _one_error_line(capsys.readouterr().err)


def test_monai_bundle(tmp_path: Path, capsys) -> None:
    pytest.importorskip("monai.bundle")
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(
        '{"network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2,'
        ' "kernel_size": 3, "padding": 1, "bias": false}, "network": "$@network_def"}'
    )
    torch.manual_seed(5)
    net = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    _, X = _write(tmp_path / "pool", "npz", n=3)
    out = tmp_path / "s.csv"
    rc = main(
        [
            "score",
            "--bundle",
            str(bundle),
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--k",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    want = score(
        net, torch.from_numpy(X), k=2, progress=False, ids=load_pool(tmp_path / "pool").ids
    ).ranked()
    t = ScoreTable.from_csv(out)
    assert t.ids == want.ids
    np.testing.assert_allclose(t.rpr, want.rpr, rtol=1e-5)
    (bundle / "models" / "model.pt").unlink()
    rc = main(
        ["score", "--bundle", str(bundle), "--pool", str(tmp_path / "pool"), "--out", str(out)]
    )
    assert rc == 2 and "models/model.pt" in _one_error_line(capsys.readouterr().err)


def test_roi_size_scores_through_sliding_windows(tmp_path: Path, capsys) -> None:
    nib = pytest.importorskip("nibabel")
    sliding = pytest.importorskip("rprselect.sliding")
    (tmp_path / "pool").mkdir()
    X = _images(2, (10, 12, 8), seed=4)
    for i, x in enumerate(X):
        nib.Nifti1Image(x, np.eye(4)).to_filename(str(tmp_path / "pool" / f"v{i}.nii.gz"))
    out = tmp_path / "s.csv"
    rc = main(
        [
            "score",
            "--model",
            "cli_models:tiny_seg3d",
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--k",
            "2",
            "--roi-size",
            "8,8,8",
            "--solver",
            "lanczos",
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    t = ScoreTable.from_csv(out)
    import rprselect

    model = tiny_seg3d()
    for i, x in enumerate(X):
        xt = torch.from_numpy(x)[None]
        op = sliding.sliding_window_operator(model, xt, (8, 8, 8))
        assert op.n_windows > 1
        res = rprselect.svd(op, k=2, solver="lanczos")
        j = t.ids.index(f"v{i}.nii.gz")
        np.testing.assert_allclose(t.rpr_curve[j], rprselect.rpr(res, xt).numpy(), rtol=1e-4)


def test_select_command(tmp_path: Path, capsys) -> None:
    scores = tmp_path / "s.csv"
    scores.write_text("id,rpr\na,0.5\nb,0.1\nc,0.3\nd,0.9\n")
    assert main(["select", "--scores", str(scores), "--n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rank,id,index,rpr"
    assert [ln.split(",") for ln in lines[1:]] == [["1", "b", "1", "0.1"], ["2", "c", "2", "0.3"]]
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "select",
                "--scores",
                str(scores),
                "--n",
                "3",
                "--strategy",
                "diverse",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(out.read_text().splitlines()) == 4
    assert main(["select", "--scores", str(scores), "--n", "5"]) == 2
    assert "n must satisfy" in _one_error_line(capsys.readouterr().err)


def test_bench_dispatches_to_the_module(monkeypatch, capsys) -> None:
    seen = {}

    def add_arguments(parser) -> None:
        parser.add_argument("--quick", action="store_true")

    def run(args) -> int:
        seen["quick"] = args.quick
        return 7

    monkeypatch.setitem(benchmarks.BENCHMARKS, "fake", ("fake_module", "a fake benchmark"))
    monkeypatch.setattr(
        benchmarks, "load", lambda name: SimpleNamespace(add_arguments=add_arguments, run=run)
    )
    assert main(["bench", "fake", "--quick"]) == 7 and seen == {"quick": True}


def test_bench_without_its_module_says_so(monkeypatch, capsys) -> None:
    monkeypatch.setitem(benchmarks.BENCHMARKS, "ghost", ("no_such_bench_module", "missing"))
    assert main(["bench", "ghost", "--quick"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "'ghost' is unavailable" in line and "no_such_bench_module" in line

    def broken(name: str):
        raise RuntimeError("boom at import")

    monkeypatch.setattr(benchmarks, "load", broken)
    assert main(["bench", "ghost"]) == 2
    assert "RuntimeError: boom at import" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [[], ["demo"], ["score"], ["select"], ["bench"]])
def test_help_has_examples(command: list[str], capsys) -> None:
    assert main([*command, "--help"]) == 0
    assert "example" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["score", "--pool", "x", "--out", "y"]) == 2  # neither --model nor --bundle
    assert main(["nope"]) == 2
    capsys.readouterr()


def test_python_m_rprselect(tmp_path: Path) -> None:
    _write(tmp_path / "pool", "npy")
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    out = tmp_path / "s.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rprselect",
            "score",
            "--model",
            "cli_models:tiny_cnn",
            "--pool",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--k",
            "2",
            "--cache",
            str(tmp_path / "c.jsonl"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(ScoreTable.from_csv(out)) == 4
    proc = subprocess.run(
        [sys.executable, "-m", "rprselect", "select", "--scores", str(out), "--n", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("rprselect: error: n must satisfy")
    assert "Traceback" not in proc.stderr


# -- issue 15: inputs that used to be misread or refused (the bad ones: test_bad_input.py) ----
def _rpr_of(X: np.ndarray, ids: list[str], model: torch.nn.Module | None = None) -> dict:
    t = score(model or tiny_cnn(), torch.from_numpy(X), k=2, progress=False, ids=ids)
    return dict(zip(t.ids, t.rpr_curve, strict=True))


def _check_scores(out: Path, want: dict) -> None:
    t = ScoreTable.from_csv(out)
    assert sorted(t.ids) == sorted(want)
    for sid, curve in zip(t.ids, t.rpr_curve, strict=True):
        np.testing.assert_allclose(curve, want[sid], rtol=1e-5, atol=1e-7, err_msg=sid)


def test_stacked_array_files_are_read_as_samples(tmp_path: Path, capsys) -> None:
    X = _images(6, (1, 8, 8), seed=3)
    np.save(tmp_path / "st.npy", X)  # np.save of a batch
    np.savez(tmp_path / "mm.npz", train_images=X[:5, 0], train_labels=np.arange(5))  # MedMNIST
    base = ["score", "--model", "cli_models:tiny_cnn", "--no-weights", "--k", "2"]
    out = tmp_path / "s.csv"
    assert main([*base, "--pool", str(tmp_path / "st.npy"), "--out", str(out)]) == 0
    _check_scores(out, _rpr_of(X, [f"st.npy:{i}" for i in range(6)]))
    assert main([*base, "--pool", str(tmp_path / "mm.npz"), "--out", str(out)]) == 0
    _check_scores(out, _rpr_of(X[:5], [f"mm.npz:{i}" for i in range(5)]))
    # --stacked for a model whose sample shape is unknown (no convolution)
    flat = "cli_models:tiny_mlp"
    assert main([*base[:2], flat, *base[3:], "--stacked", "--pool", str(tmp_path / "st.npy"),
                 "--out", str(out)]) == 0  # fmt: skip
    _check_scores(out, _rpr_of(X, [f"st.npy:{i}" for i in range(6)], tiny_mlp()))
    # --no-stacked: one sample per file, refused with the reading that was tried
    assert main([*base, "--no-stacked", "--pool", str(tmp_path / "st.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "st.npy holds an array of shape (6, 1, 8, 8): read as one sample it has 4 dims" in err
    assert "(stacked=False was given)" in err


def _prefixed(state: dict, kind: str) -> dict:
    if kind == "dataparallel":
        return {f"module.{k}": v for k, v in state.items()}
    if kind == "compiled-ddp":
        return {f"_orig_mod.module.{k}": v for k, v in state.items()}
    lightning = {f"model.{k}": v for k, v in state.items()}
    lightning["loss_fn.weight"] = torch.ones(5)  # another submodule of the LightningModule
    return {
        "state_dict": lightning,
        "epoch": 3,
        "global_step": 40,
        "pytorch-lightning_version": "2.4",
    }


@pytest.mark.parametrize("kind", ["dataparallel", "compiled-ddp", "lightning"])
def test_wrapped_checkpoints_are_unwrapped(kind: str, tmp_path: Path, capsys) -> None:
    _, X = _write(tmp_path / "pool", "npz")
    model = tiny_cnn()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.linspace(0.5, 1.5, p.numel()).reshape(p.shape))
    torch.save(_prefixed(model.state_dict(), kind), tmp_path / "w.pt")
    out = tmp_path / "s.csv"
    w, pool = str(tmp_path / "w.pt"), str(tmp_path / "pool")
    argv = ["score", "--model", "cli_models:tiny_cnn", "--weights", w, "--pool", pool,
            "--out", str(out), "--k", "3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    prefix = {"dataparallel": "module.", "compiled-ddp": "_orig_mod.module.", "lightning": "model."}
    assert f"took the entries under {prefix[kind]!r}" in capsys.readouterr().err
    want = score(
        model, torch.from_numpy(X), k=3, progress=False, ids=load_pool(tmp_path / "pool").ids
    )
    _check_scores(out, dict(zip(want.ids, want.rpr_curve, strict=True)))


def test_model_module_in_the_current_folder(tmp_path: Path) -> None:
    """``rprselect score --model mynets:make`` finds ./mynets.py, as ``python -m`` would."""
    script = Path(sys.executable).parent / "rprselect"
    if not script.exists():
        pytest.skip(f"the rprselect console script is not installed beside {sys.executable}")
    _write(tmp_path / "pool", "npy")
    (tmp_path / "mynets.py").write_text(
        "from cli_models import tiny_cnn\n\ndef make():\n    return tiny_cnn()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS))  # not the current folder
    argv = [str(script), "score", "--model", "mynets:make", "--no-weights", "--pool", "pool",
            "--out", "s.csv", "--k", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(ScoreTable.from_csv(tmp_path / "s.csv")) == 4


def test_score_help_explains_solver_and_method(capsys) -> None:
    assert main(["score", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--solver {auto,dense,lanczos,slepc} truncated SVD backend: dense builds A[x]" in text
    assert "--method {auto,adjoint,autograd} how A[x] is applied: adjoint uses" in text


def test_demo_scores_csv_reports_lpr_at_the_reported_rank(tmp_path: Path) -> None:
    """The demo's scores.csv summarises LPR at rank 3, as its console table does, not at
    rank k = 10 (always 1 with 10 classes)."""
    pytest.importorskip("matplotlib")
    from rprselect.demo import _write_files
    from rprselect.select import select

    rng = np.random.default_rng(0)
    n, k = 20, 10
    lpr_curve = np.sort(rng.random((n, k)), axis=1)
    lpr_curve[:, -1] = 1.0
    table = ScoreTable(
        ids=[str(i) for i in range(n)], index=np.arange(n),
        rpr_curve=np.sort(rng.random((n, k)), axis=1), singular_values=np.ones((n, k)),
        converged=np.ones(n, bool), max_residual=np.zeros(n), n_products=np.zeros(n, np.int64),
        batch_seconds=np.zeros(n), batch_size=np.ones(n, np.int64), input_norm=np.ones(n),
        lpr_curve=lpr_curve,
    )  # fmt: skip
    y = np.arange(n) % 10
    x = rng.random((n, 1, 8, 8))
    files = _write_files(tmp_path, table, select(table, 3), x, y, y, lpr_rank=3)
    got = ScoreTable.from_csv(files["scores"])
    with open(files["scores"]) as fh:
        head = fh.readline().strip().split(",")
    assert "lpr" not in head and head[3] == "lpr_at_3"
    rows = {r.split(",")[0]: r.split(",") for r in files["scores"].read_text().splitlines()[1:]}
    for i, sid in enumerate(got.ids):
        assert float(rows[sid][3]) == lpr_curve[int(sid), 2]
        assert got.lpr_curve is not None
        np.testing.assert_array_equal(got.lpr_curve[i], lpr_curve[int(sid)])


def test_brats_cpu_estimate_arithmetic(monkeypatch) -> None:
    from rprselect.benchmarks import brats

    monkeypatch.setattr(brats, "_step_seconds", lambda s, n_in, dims, patch: (1.0, 16))
    s = dict(brats.PRESETS["paper"], preset="paper")
    text = brats.cpu_estimate(s, [2, 2], 4, [(240, 240, 155)])
    # 3-D: 1000 epochs * ceil(2 patches * 2 cases / batch 2) * 2 folds = 4000 steps of 1 s; the
    # same for 2-D (2 patches per case); SVD: 2*2*2 windows * 70 products * 1/2 s = 280 s
    assert text.startswith(
        "estimated run time on this CPU: at least 2.3 hours (3-D training 66.7 minutes, 2-D "
        "training 66.7 minutes, volume SVDs 4.67 minutes; one 3-D step on a 16^3 patch, "
        "scaled to 128^3: 1 s). The paper preset is a GPU job: pass --device cuda, or --cpu"
    ), text
    assert "GPU job" not in brats.cpu_estimate(dict(s, preset="cpu"), [2, 2], 4, [(240,) * 3])


def test_bench_brats_on_cpu_prints_the_estimate_before_training(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    pytest.importorskip("monai")
    pytest.importorskip("nibabel")
    from rprselect.benchmarks import brats
    from rprselect.data.synthetic import write_synthetic_brats

    write_synthetic_brats(tmp_path / "data", n_cases=4, shape=(16, 16, 8),
                          modalities=("flair", "t1"), seed=0)  # fmt: skip

    class Started(Exception):
        pass

    def train(*args, **kwargs):
        raise Started

    monkeypatch.setattr(brats, "_train_or_load", train)
    with pytest.raises(Started):
        brats.main(["--data-dir", str(tmp_path / "data"), "--modalities", "flair,t1",
                    "--out", str(tmp_path / "out"), "--folds", "2", "--threads", "1"])  # fmt: skip
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("estimated run time"))
    assert re.fullmatch(
        r"estimated run time on this CPU: at least [\d.]+ (days|hours) \(.*\)\. The paper "
        r"preset is a GPU job: pass --device cuda, or --cpu .*",
        line,
    ), line


def test_a_model_that_reshapes_its_input_is_not_refused() -> None:
    """The sample rank is read from the first convolution only when nothing before it changes
    the rank: a model taking ``(1, 64)`` rows through ``nn.Unflatten`` scores them."""
    from rprselect.sample_spec import sample_spec

    X = torch.from_numpy(_images(3, (1, 8, 8), seed=5))
    flat = torch.nn.Sequential(torch.nn.Unflatten(2, (8, 8)), *tiny_cnn())
    assert sample_spec(flat) is None and sample_spec(tiny_cnn()) is not None
    got = score(flat, X.reshape(3, 1, 64), k=2, progress=False)
    want = score(tiny_cnn(), X, k=2, progress=False)
    np.testing.assert_allclose(got.rpr_curve, want.rpr_curve, rtol=1e-5, atol=1e-7)
