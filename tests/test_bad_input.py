"""What each mistake gets you: the bad input, the exact message and the exit code.

This file is the table the README's "Nothing fails silently" section links to. Each row of
``TABLE`` is one bad input, from the command line (``argv``, the exit code and a regex that one
whole line of its output must match) or from the Python API (a call, the exception type and a
regex of its whole message). One parametrised test checks every row:

- a command line row runs in-process through ``rprselect.cli.main`` (fast), or, when
  ``process=True``, as a real ``python -m rprselect`` process, so that the exit code is the one
  a shell sees;
- ``scores=False`` rows must fail before any scoring starts (``score`` is replaced by a stub
  that fails the test if it is called);
- every command line row must be free of tracebacks, and an exit code of 2 must come with
  exactly one ``rprselect: error:`` line.

``{tmp}`` in an argument is the test's folder, prepared by :func:`_inputs`. Rows are grouped by
the item of issue 15 they come from; the lead adds the rows of items 1, 2 (shape groups), 8 and
9a (per-sample timing) in the marked places.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_models import tiny_cnn
from torch.utils.data import DataLoader, TensorDataset

from rprselect.cli import main
from rprselect.pool import PoolItemError, iter_pool, load_pool
from rprselect.select import select
from rprselect.table import ScoreTable

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@dataclass(frozen=True)
class Case:
    """One bad input and what it must get.

    Attributes:
        id: short name, ``<issue item>-<what>``.
        run: the command line (``argv`` after ``rprselect``), or an API call taking the folder.
        code: the exit code (command line) or the exception type (API).
        message: regex one whole line of the output (command line) or the whole exception
            message (API) must match.
        also: further regexes that other whole lines of the output must match.
        stream: ``"err"`` or ``"out"``: where ``message`` is printed.
        process: run as a real process (the exit code as the shell sees it).
        scores: ``False`` when the command must fail before scoring starts.
        check: further checks on the folder and the output (``stderr``) after the run.
        marks: pytest marks (skip or xfail with a reason).
    """

    id: str
    run: list[str] | Callable[[Path], Any]
    code: int | type[BaseException]
    message: str
    also: tuple[str, ...] = ()
    stream: str = "err"
    process: bool = False
    scores: bool = True
    check: Callable[[Path, str], None] | None = None
    marks: tuple[Any, ...] = field(default_factory=tuple)


def _score_argv(*extra: str, pool: str = "{tmp}/pool", model: str = "cli_models:tiny_cnn"):
    return ["score", "--model", model, "--pool", pool, "--out", "{tmp}/s.csv", "--k", "2",
            "--no-progress", *extra]  # fmt: skip


def _nothing_written(tmp: Path, err: str) -> None:
    stray = [p.name for p in tmp.rglob("*") if p.name.endswith((".tmp", ".probe"))]
    assert not stray, f"temporary files left behind: {stray}"
    assert not (tmp / "s.csv").exists() and not any((tmp / "folder").iterdir())


def _partial_results(tmp: Path, err: str) -> None:
    assert sorted(ScoreTable.from_csv(tmp / "s.csv").ids) == ["a0.npy", "a1.npy", "a2.npy"]
    lines = (tmp / "s.failures.csv").read_text().splitlines()
    assert lines == ["id,index,reason", "zz_nan.npy,3,holds NaN or Inf (1 of 64 values)"]


def _only_rprselect_warnings(tmp: Path, err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "jit.script" not in err and "user warning from the model" not in err, err
    assert len(lines) == len(set(lines)), f"a warning is repeated:\n{err}"
    assert all(ln.startswith("rprselect: warning: ") for ln in lines), err


def _changed_file_is_rescored(tmp: Path, err: str) -> None:
    """Same file names, other pixels: the second run must not serve the first run's rows."""
    first = ScoreTable.from_csv(tmp / "s.csv")
    np.save(tmp / "pool" / "a1.npy", np.load(tmp / "pool" / "a1.npy")[..., ::-1].copy())
    argv = [a.format(tmp=tmp) for a in _score_argv("--cache", "{tmp}/c.jsonl", "--no-weights")]
    assert main(argv) == 0
    again = ScoreTable.from_csv(tmp / "s.csv")
    fresh_argv = [a.format(tmp=tmp) for a in _score_argv("--no-weights")]
    fresh_argv[fresh_argv.index("--out") + 1] = str(tmp / "fresh.csv")
    assert main(fresh_argv) == 0
    fresh = ScoreTable.from_csv(tmp / "fresh.csv")
    row = {i: n for n, i in enumerate(again.ids)}
    old = {i: n for n, i in enumerate(first.ids)}
    new = {i: n for n, i in enumerate(fresh.ids)}
    assert again.rpr[row["a1.npy"]] != first.rpr[old["a1.npy"]]
    assert again.rpr[row["a1.npy"]] == fresh.rpr[new["a1.npy"]]
    assert again.rpr[row["a0.npy"]] == first.rpr[old["a0.npy"]]


def _odd_shape_alone(tmp: Path, err: str) -> None:
    assert sorted(ScoreTable.from_csv(tmp / "s.csv").ids) == ["a0.npy", "a1.npy", "a2.npy"]


def _timing_columns_per_batch(tmp: Path, err: str) -> None:
    head = (tmp / "s.csv").read_text().splitlines()[0].split(",")
    assert "seconds" not in head and {"batch_seconds", "batch_size", "n_products"} <= set(head)


def _score_binary(k: int) -> Any:
    from cli_models import tiny_binary

    from rprselect.scoring import score

    return score(tiny_binary(), _pool_of((3, 1, 8, 8)), k=k, progress=False)


def _pool_of(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)) + 0.05


def _score(pool: Any) -> Any:
    from rprselect.scoring import score

    return score(tiny_cnn(), pool, k=2, progress=False)


def _table(ids: list[str], rpr: list[float]) -> ScoreTable:
    n = len(ids)
    return ScoreTable(
        ids=ids,
        index=np.arange(n),
        rpr_curve=np.asarray(rpr, dtype=float)[:, None],
        singular_values=np.ones((n, 1)),
        converged=np.ones(n, bool),
        max_residual=np.zeros(n),
        n_products=np.zeros(n, np.int64),
        batch_seconds=np.zeros(n),
        batch_size=np.ones(n, np.int64),
        input_norm=np.ones(n),
    )


def _to_csv_into_folder(tmp: Path) -> None:
    try:
        _table(["a"], [0.5]).to_csv(tmp / "folder")
    finally:
        assert [p.name for p in tmp.iterdir() if p.name.endswith(".tmp")] == []


NOT_WRITABLE = (
    r"rprselect: error: --{opt} \S+/afile/{name} cannot be written: \S+/afile is a file, "
    r"not a folder"
)
FAILED_ONE = (
    r"rprselect: warning: 1 of 4 samples could not be scored, listed in \S+/s\.failures\.csv: "
    r"zz_nan\.npy: holds NaN or Inf \(1 of 64 values\)"
)
STACK5 = (
    r"rprselect: warning: 1 of 1 samples could not be scored, listed in \S+/s\.failures\.csv: "
    r"stack5\.npy: \S+/stack5\.npy holds an array of shape \(1, 6, 1, 8, 8\): read as one "
    r"sample it has 5 dims, read as a stack of samples \(6, 1, 8, 8\) it has 4; the model's "
    r"first layer Conv2d\(1, 4, kernel_size=\(3, 3\)\) \('0'\) takes samples \(1, H, W\) "
    r"\(3 dims\)"
)
NO_BATCH_DIM = (
    r"pool of shape \(1, 8, 8\) was read as 1 sample of shape \(8, 8\) \(2 dims\), but the "
    r"model's first layer Conv2d\(1, 4, kernel_size=\(3, 3\)\) \('0'\) takes samples "
    r"\(1, H, W\) \(3 dims\), so a pool must be \(N, 1, H, W\) \(4 dims\); it looks like one "
    r"sample without its batch dimension: pass x\[None\] \(x\.unsqueeze\(0\)\)"
)
LOADER = (
    r"pool is a DataLoader with a RandomSampler \(shuffle=True\): samples would be numbered in "
    r"a shuffled order and every score would get another sample's id; a DataLoader must yield "
    r"the dataset in order, all of it, for the ids to match: pass DataLoader\(dataset, "
    r"shuffle=False\), or the Dataset itself"
)

TABLE: list[Case] = [
    # -- item 1: a cache is keyed by content, not by file name ---------------------------------
    Case("1-same-names-other-pixels", _score_argv("--cache", "{tmp}/c.jsonl", "--no-weights"), 0,
         r"scored 3 samples \(k=2, 0 not converged, 0 failed\); wrote \S+/s\.csv",
         stream="out", check=_changed_file_is_rescored),
    # -- item 2: a failed sample is not a success -------------------------------------------
    Case("2-failed-sample-exits-1", _score_argv(pool="{tmp}/bad_pool"), 1,
         r"rprselect: error: 1 of 4 samples failed \(more than --max-failures 0\); the scores "
         r"of the others are in \S+/s\.csv\. Pass --allow-failures \(or --max-failures N\) to "
         r"accept failures", also=(FAILED_ONE,), process=True, check=_partial_results),
    Case("2-allow-failures", _score_argv("--allow-failures", pool="{tmp}/bad_pool"), 0,
         FAILED_ONE, check=_partial_results),
    Case("2-max-failures-not-exceeded", _score_argv("--max-failures", "1", pool="{tmp}/bad_pool"),
         0, FAILED_ONE),
    Case("2-max-failures-negative", _score_argv("--max-failures", "-1"), 2,
         r"rprselect score: error: argument --max-failures: must be an integer >= 0, got '-1'",
         scores=False),
    # -- item 2: samples are grouped by shape; an odd file fails alone ---------------------------
    Case("2-odd-shape-first-fails-alone",
         _score_argv("--allow-failures", "--no-weights", pool="{tmp}/odd_pool"), 0,
         r"rprselect: warning: 1 of 4 samples could not be scored, listed in \S+/s\.failures\.csv: "
         r"a_odd\.npy: x of shape \(1, 7, 7\) was rejected by the model: .*",
         check=_odd_shape_alone),
    # -- item 3: outputs are checked before the work -----------------------------------------
    Case("3-out-is-a-folder", _score_argv("--out", "{tmp}/folder"), 2,
         r"rprselect: error: --out \S+/folder is a folder; give a file name, e\.g\. "
         r"\S+/folder/scores\.csv", scores=False, check=_nothing_written),
    Case("3-out-not-writable", _score_argv("--out", "{tmp}/afile/o.csv"), 2,
         NOT_WRITABLE.format(opt="out", name=r"o\.csv"), scores=False),
    Case("3-cache-not-writable", _score_argv("--cache", "{tmp}/afile/c.jsonl"), 2,
         NOT_WRITABLE.format(opt="cache", name=r"c\.jsonl"), scores=False),
    Case("3-to-csv-into-a-folder", _to_csv_into_folder, IsADirectoryError,
         r"cannot write \S+/folder: it is a folder; give a file name, e\.g\. "
         r"\S+/folder/scores\.csv"),
    # -- item 4: a loader that reorders or drops samples --------------------------------------
    Case("4-shuffled-dataloader",
         lambda tmp: _score(DataLoader(TensorDataset(_pool_of((6, 1, 8, 8))), shuffle=True)),
         ValueError, LOADER),
    Case("4-drop-last-dataloader",
         lambda tmp: list(iter_pool(DataLoader(TensorDataset(_pool_of((5, 1, 8, 8))),
                                               batch_size=2, drop_last=True))),
         ValueError,
         r"pool is a DataLoader with drop_last=True: the last incomplete batch would be lost "
         r"without a trace; .*: pass drop_last=False"),
    # -- item 5: one line, never a traceback ---------------------------------------------------
    Case("5-empty-weights-file", _score_argv("--weights", "{tmp}/empty.pt"), 2,
         r"rprselect: error: cannot read checkpoint \S+/empty\.pt: the file is empty \(0 bytes\)",
         process=True, scores=False),
    Case("5-device-cuda-without-cuda", _score_argv("--device", "cuda"), 2,
         r"rprselect: error: --device cuda: CUDA is not available here \(torch [^,]+, "
         r"torch\.cuda\.is_available\(\) is False\); use --device cpu",
         scores=False, marks=(NO_CUDA,)),
    Case("5-device-banana", _score_argv("--device", "banana"), 2,
         r"rprselect: error: --device must be a torch device such as cpu, cuda, cuda:1 or mps, "
         r"got 'banana'", scores=False),
    Case("5-sample-without-batch-dim-iter-pool",
         lambda tmp: list(iter_pool(_pool_of((1, 8, 8)), model=tiny_cnn())), ValueError,
         NO_BATCH_DIM),
    Case("5-sample-without-batch-dim-score", lambda tmp: _score(_pool_of((1, 8, 8))), ValueError,
         NO_BATCH_DIM),
    Case("5-channels-missing-iter-pool",
         lambda tmp: list(iter_pool(_pool_of((6, 8, 8)), model=tiny_cnn())), ValueError,
         r"pool of shape \(6, 8, 8\) was read as 6 samples of shape \(8, 8\) \(2 dims\), .*; "
         r"it looks like 6 samples without their channel axis: pass x\[:, None\] "
         r"\(x\.unsqueeze\(1\)\)"),
    # -- item 6: nothing surprising happens quietly ---------------------------------------------
    Case("6-no-weights-warns", _score_argv(), 0,
         r"rprselect: warning: --model cli_models:tiny_cnn got no --weights: scoring the network "
         r"as the factory returns it \(randomly initialised, unless the factory loads weights "
         r"itself\); pass --weights FILE, or --no-weights to say so"),
    # -- item 7: a stacked array file ---------------------------------------------------------
    Case("7-array-fits-no-reading", _score_argv(pool="{tmp}/stack5.npy"), 2,
         r"rprselect: error: no sample of \S+/stack5\.npy could be scored \(1 failures, listed "
         r"in \S+/s\.failures\.csv\)", also=(STACK5,)),
    Case("7-array-fits-no-reading-api",
         lambda tmp: load_pool(tmp / "stack5.npy", model=tiny_cnn())[0], PoolItemError,
         r"pool item 'stack5\.npy' \(index 0\): " + STACK5.split("stack5\\.npy: ", 1)[1]),
    # -- item 8: defaults adapt to the model -------------------------------------------------------
    Case("8-binary-classifier-default-k",
         ["score", "--model", "cli_models:tiny_binary", "--pool", "{tmp}/pool", "--out",
          "{tmp}/s.csv", "--no-progress", "--no-weights"], 0,
         r"rprselect: warning: k was not given: using k=2, the largest possible for this model "
         r"\(min\(m, n\) = 2 of A\[x\]; the default is 10\)"),
    Case("8-explicit-k-too-large", _score_argv("--k", "9", "--no-weights"), 2,
         r"rprselect: error: k must satisfy 0 < k <= min\(m, n\) = 5, got 9"),
    Case("8-api-binary-classifier-k-too-large",
         lambda tmp: _score_binary(k=3), ValueError,
         r"k must satisfy 0 < k <= min\(m, n\) = 2, got 3"),
    # -- item 9: output that does not mislead -----------------------------------------------------
    # 9a: the timing columns say they are per batch
    Case("9a-timing-columns-named-per-batch", _score_argv("--no-weights"), 0,
         r"scored 3 samples \(k=2, 0 not converged, 0 failed\); wrote \S+/s\.csv",
         stream="out", check=_timing_columns_per_batch),
    Case("9-only-rprselect-warnings-once",
         _score_argv("--batch-size", "1", "--no-weights", model="cli_models:noisy_cnn"), 0,
         r"rprselect: warning: falling back to method='autograd': layer 'net\.1 \(GELU\)' has "
         r"no explicit adjoint rule \[3 times\]", check=_only_rprselect_warnings),
    # -- item 10: smaller things ----------------------------------------------------------------
    Case("10-bare-command", [], 2, r"usage: rprselect \[-h\] \[--version\] COMMAND \.\.\.",
         also=(r"  rprselect select --scores scores\.csv --n 20",), stream="out", process=True),
    Case("10-select-nan-rpr", ["select", "--scores", "{tmp}/nan.csv", "--n", "1"], 2,
         r"rprselect: error: scores must hold a finite rpr for every row, got 1 NaN or infinite "
         r"value\(s\) for ids b"),
    Case("10-select-duplicate-ids", ["select", "--scores", "{tmp}/dup.csv", "--n", "1"], 2,
         r"rprselect: error: scores must have unique ids, got 1 id\(s\) on more than one row: a"),
    Case("10-select-nan-rpr-api", lambda tmp: select(_table(["a", "b"], [0.1, np.nan]), 1),
         ValueError, r"scores must hold a finite rpr for every row, got 1 NaN or infinite "
         r"value\(s\) for ids b"),
    Case("10-solver-dense-warns",
         _score_argv("--solver", "dense", "--no-weights", pool="{tmp}/pool16",
                     model="cli_models:tiny_seg2d"), 0,
         r"rprselect: warning: --solver dense builds every A\[x\] explicitly: min\(m, n\) = 256 "
         r"products per sample \(A\[x\] is 512 x 256\), where --solver auto would use Lanczos "
         r"for k=2 \(dense only up to min\(m, n\) = 64\); expect it to be much slower"),
]  # fmt: skip


def _inputs(tmp: Path) -> None:
    """The files the rows refer to as ``{tmp}/...``."""
    X = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32) + 0.05
    for folder in ("pool", "bad_pool"):
        (tmp / folder).mkdir()
        for i in range(3):
            np.save(tmp / folder / f"a{i}.npy", X[i])
    (tmp / "odd_pool").mkdir()
    for i in range(3):
        np.save(tmp / "odd_pool" / f"a{i}.npy", X[i])
    np.save(tmp / "odd_pool" / "a_odd.npy", X[3][:, :7, :7])  # first by name, another shape
    nan = X[3].copy()
    nan[0, 2, 2] = np.nan
    np.save(tmp / "bad_pool" / "zz_nan.npy", nan)
    (tmp / "pool16").mkdir()
    np.save(tmp / "pool16" / "b.npy", np.tile(X[0], (1, 2, 2)))  # (1, 16, 16)
    np.save(tmp / "stack5.npy", np.repeat(X[None, :1], 6, axis=1))  # (1, 6, 1, 8, 8)
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "folder").mkdir()
    (tmp / "afile").write_text("a file, not a folder\n")
    (tmp / "nan.csv").write_text("id,rpr\na,0.5\nb,nan\nc,0.2\n")
    (tmp / "dup.csv").write_text("id,rpr\na,0.5\nb,0.1\na,0.2\n")


def _run_cli(case: Case, argv: list[str], tmp: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    if case.process:
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        )
        proc = subprocess.run(
            [sys.executable, "-m", "rprselect", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp,
        )
        return proc.returncode, proc.stdout, proc.stderr
    if not case.scores:

        def no_scoring(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the command started scoring before it failed")

        monkeypatch.setattr("rprselect.scoring.score", no_scoring)
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _full_line(pattern: str, text: str) -> bool:
    return any(re.fullmatch(pattern, line) for line in text.splitlines())


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in TABLE])
def test_bad_input(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    _inputs(tmp_path)
    if callable(case.run):
        assert isinstance(case.code, type)
        with pytest.raises(case.code) as raised:
            case.run(tmp_path)
        assert re.fullmatch(case.message, str(raised.value)), f"message:\n{raised.value}"
        return
    argv = [a.format(tmp=tmp_path) for a in case.run]
    code, out, err = _run_cli(case, argv, tmp_path, capsys, monkeypatch)
    shown = f"exit {code}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    assert code == case.code, shown
    assert "Traceback" not in out + err, shown
    if code == 2 and case.stream == "err":
        errors = [ln for ln in err.splitlines() if "error: " in ln]
        assert len(errors) == 1, shown
    text = err if case.stream == "err" else out
    assert _full_line(case.message, text), f"no line matches {case.message!r}\n{shown}"
    for pattern in case.also:
        assert _full_line(pattern, out + "\n" + err), f"no line matches {pattern!r}\n{shown}"
    if case.check is not None:
        case.check(tmp_path, err)
