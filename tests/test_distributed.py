"""Distributed pool scoring: two gloo ranks under torchrun give a single-process table exactly,
and a job with a rank killed mid-run resumes from the per-rank caches without loss or repeats.

Run as a script (``python -m torch.distributed.run ... tests/test_distributed.py ...``), this
file is the worker: it scores a folder of ``.npy`` volumes with :func:`score_distributed`, and
its fault hooks slow rank 0 down and SIGKILL rank 1 when it claims a given unit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SETTINGS: dict[str, Any] = dict(k=3, solver="lanczos", batch_size=2)
N_GOOD = 13  # plus one all-zeros file, last, recorded as a failure


def _write_pool(folder: Path) -> Path:
    """13 volumes whose Lanczos cost differs (powers of noise), and a blank one last."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(N_GOOD):
        x = torch.rand(1, 8, 8, 8, generator=g, dtype=torch.float64) ** (1 + i % 5)
        np.save(folder / f"vol{i:02d}.npy", x.numpy())
    np.save(folder / "vol99_blank.npy", np.zeros((1, 8, 8, 8)))
    return folder


def _model() -> torch.nn.Module:
    from cli_models import tiny_seg3d

    return tiny_seg3d().double()


# -- the worker ---------------------------------------------------------------------------------
def _worker(argv: list[str]) -> int:
    import rprselect.distributed as rd
    from rprselect.pool import load_pool

    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--kill-rank1-at", type=int, default=0, help="SIGKILL rank 1 at its unit N")
    ap.add_argument("--slow-rank0", type=float, default=0.0, help="seconds rank 0 sleeps/unit")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    original, calls = rd._score_unit, [0]

    def hooked(job: Any, positions: Any) -> Any:
        calls[0] += 1
        if rank == 1 and calls[0] == args.kill_rank1_at and first_attempt:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-unit: this unit is lost, earlier kept
        if rank == 0:
            time.sleep(args.slow_rank0)
        return original(job, positions)

    rd._score_unit = hooked  # type: ignore[assignment]
    table = rd.score_distributed(
        _model(), load_pool(args.pool), cache=args.cache, progress=False, **SETTINGS
    )
    if rd.is_main_rank():
        data = {
            "rows": list(table.rows()),
            "failures": [f.id for f in table.failures],
            "ranks": [s.__dict__ for s in table.ranks],
            "world_size": table.world_size,
            "summary": table.summary(),
        }
        Path(args.out).write_text(json.dumps(data))
    return 0


# -- the tests ----------------------------------------------------------------------------------
def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",  # loopback only
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--local-addr=127.0.0.1", f"--nproc-per-node={nproc}", "--monitor-interval=0.1"]
    cmd += [str(Path(__file__).resolve()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_pool(tmp_path_factory.mktemp("dist") / "pool")


@pytest.fixture(scope="module")
def reference(pool_dir: Path) -> Any:
    """The single-process table, on one thread like every rank."""
    from rprselect.pool import load_pool
    from rprselect.scoring import score

    with pytest.warns(UserWarning, match="vol99_blank"):
        return score(_model(), load_pool(pool_dir), progress=False, **SETTINGS)


def _assert_same(got_rows: list[dict[str, Any]], want: Any) -> None:
    from rprselect.table import ScoreTable

    got = ScoreTable.from_rows(got_rows, k=want.k)
    assert got.ids == want.ids
    for col in want.columns:
        if col == "batch_seconds":  # timing: the only column allowed to differ
            continue
        a, b = np.asarray(got[col]), np.asarray(want[col])
        bad = np.flatnonzero((a != b).reshape(len(a), -1).any(axis=1))
        assert bad.size == 0, f"column {col} differs at ids {[want.ids[i] for i in bad]}"


def _cached_ids(cache: Path, ranks: str = "*") -> list[str]:
    """The ids in the rank caches (``c.rank{ranks}.jsonl``), one entry per cached row."""
    ids = []
    for f in sorted(cache.parent.glob(f"c.rank{ranks}.jsonl")):
        lines = f.read_text().splitlines()[1:]
        ids += [json.loads(line)["id"] for line in lines]
    return ids


def test_two_gloo_ranks_equal_one_process(pool_dir: Path, reference: Any, tmp_path: Path) -> None:
    out, cache = tmp_path / "out.json", tmp_path / "c.jsonl"
    proc = _torchrun(2, "--pool", str(pool_dir), "--out", str(out), "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    _assert_same(data["rows"], reference)
    assert data["failures"] == ["vol99_blank.npy"] == [f.id for f in reference.failures]
    assert data["world_size"] == 2
    ranks = data["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["units"] >= 1 and r["busy_seconds"] > 0 for r in ranks), data["summary"]
    assert sum(r["scored"] for r in ranks) == N_GOOD and sum(r["failed"] for r in ranks) == 1
    assert sum(r["units"] for r in ranks) == 7  # ceil(14 / batch 2): each unit once
    ids = _cached_ids(cache)
    assert sorted(ids) == sorted(reference.ids), "each scored sample cached exactly once"

    # a rerun on one process finds everything in the two ranks' caches (rank 1's is an orphan)
    from rprselect.distributed import score_distributed
    from rprselect.pool import load_pool

    with pytest.warns(UserWarning, match="vol99_blank"):  # failures are retried, not cached
        again = score_distributed(
            _model(), load_pool(pool_dir), cache=str(cache), progress=False, **SETTINGS
        )
    assert (again.ranks[0].scored, again.ranks[0].cached) == (0, N_GOOD)
    _assert_same(list(again.rows()), reference)


def test_killed_rank_resumes_without_loss_or_repeats(
    pool_dir: Path, reference: Any, tmp_path: Path
) -> None:
    out, cache = tmp_path / "out.json", tmp_path / "c.jsonl"
    common = ["--pool", str(pool_dir), "--out", str(out), "--cache", str(cache)]
    first = _torchrun(2, *common, "--kill-rank1-at", "2", "--slow-rank0", "1.0")
    assert first.returncode != 0, "rank 1 should have been killed"
    assert "SIGKILL" in first.stderr, first.stderr[-2000:]
    assert not out.exists()
    before = _cached_ids(cache)
    # rank 1 finished its first unit (2 samples; 1 if it drew the last unit) and died in its
    # second, while rank 0 was still sleeping through its units
    assert len(_cached_ids(cache, "1")) in (1, 2)
    assert len(before) == len(set(before)) < N_GOOD

    second = _torchrun(2, *common)
    assert second.returncode == 0, second.stderr[-3000:]
    data = json.loads(out.read_text())
    _assert_same(data["rows"], reference)
    ranks = data["ranks"]
    assert sum(r["cached"] for r in ranks) == len(before), "every finished sample was kept"
    assert sum(r["scored"] for r in ranks) == N_GOOD - len(before), "and none was rescored"
    after = _cached_ids(cache)
    assert sorted(after) == sorted(reference.ids), "every id cached exactly once"


# -- one process, no launcher (fast) ----------------------------------------------------------
def test_one_process_equals_score_with_labels_and_resumes(tmp_path: Path) -> None:
    from cli_models import tiny_cnn

    from rprselect.distributed import DistributedScoreTable, rank_cache_path, score_distributed
    from rprselect.scoring import score

    X = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = np.arange(9) % 5
    model = tiny_cnn().double()
    opts: dict[str, Any] = dict(k=3, solver="lanczos", batch_size=4, labels=labels, progress=False)
    want = score(model, X, **opts)
    cache = tmp_path / "s.jsonl"
    got = score_distributed(model, X, cache=str(cache), **opts)
    assert isinstance(got, DistributedScoreTable) and got.lpr_curve is not None
    _assert_same(list(got.rows()), want)
    assert (got.world_size, got.unit_size, len(got.ranks)) == (1, 4, 1)
    assert (got.ranks[0].units, got.ranks[0].scored, got.ranks[0].cached) == (3, 9, 0)
    assert rank_cache_path(cache, 0).is_file()
    again = score_distributed(model, X, cache=str(cache), **opts)  # everything cached
    _assert_same(list(again.rows()), want)
    # every unit is still read (the content of each sample is checked), none is scored
    assert (again.ranks[0].units, again.ranks[0].scored, again.ranks[0].cached) == (3, 0, 9)
    with pytest.raises(ValueError, match="another model or other settings"):
        score_distributed(model, X, cache=str(cache), **{**opts, "k": 2})


def test_rank_cache_path() -> None:
    from rprselect.distributed import rank_cache_path

    assert rank_cache_path("out/scores.cache.jsonl", 3) == Path("out/scores.cache.rank3.jsonl")
    assert rank_cache_path("cachefile", 0) == Path("cachefile.rank0")


def test_bad_inputs_name_the_parameter() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from rprselect.distributed import score_distributed

    model, X = _model(), torch.rand(3, 1, 4, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        score_distributed(model, X, k=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        score_distributed(model, X, batch_size=0)
    with pytest.raises(ValueError, match="errors must be"):
        score_distributed(model, X, errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels must have one entry per pool sample"):
        score_distributed(model, X, labels=[0, 1])
    with pytest.raises(TypeError, match="random-access"):
        score_distributed(model, DataLoader(TensorDataset(X), shuffle=True))
    with pytest.raises(ValueError, match="NaN"):
        score_distributed(model, torch.cat([X, X[:1] * float("nan")]), k=1, progress=False)


def test_bench_scaling_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rprselect.benchmarks import scaling

    parser = argparse.ArgumentParser()
    scaling.add_arguments(parser)
    args = parser.parse_args(["--quick", "--out", str(tmp_path)])
    assert scaling.run(args) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "results.json").read_text())
    runs = {r["procs"]: r for r in data["runs"]}
    assert sorted(runs) == [1, 2]
    assert all(r["equal_to_first"] for r in runs.values()), "1 and 2 processes: same table"
    t1, t2 = runs[1]["scoring_seconds"], runs[2]["scoring_seconds"]
    assert runs[2]["speedup"] == pytest.approx(t1 / t2)
    assert runs[2]["efficiency"] == pytest.approx(t1 / (2 * t2))
    assert [len(r["ranks"]) for r in data["runs"]] == [1, 2]
    assert sum(s["scored"] for s in runs[2]["ranks"]) == scaling.QUICK["n"]
    table = (tmp_path / "report.md").read_text().split("\n\n")[2].strip()
    assert printed.rstrip().endswith(table), "the table is printed last"


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))


def test_torchrun_cli_equals_single_process_cli(pool_dir: Path, tmp_path: Path) -> None:
    """``torchrun -m rprselect score`` writes the same ranked CSV as a plain ``rprselect score``."""
    import csv

    torch.save(_model().float().state_dict(), tmp_path / "w.pt")
    common = [
        "score",
        "--model",
        "cli_models:tiny_seg3d",
        "--weights",
        str(tmp_path / "w.pt"),
        "--pool",
        str(pool_dir),
        "--k",
        "3",
        "--solver",
        "lanczos",
        "--batch-size",
        "2",
        "--allow-failures",  # the blank volume fails in both runs, by design
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
    )
    single = subprocess.run(
        [sys.executable, "-m", "rprselect", *common, "--out", str(tmp_path / "one.csv")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert single.returncode == 0, single.stderr
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--local-addr=127.0.0.1",
        "--nproc-per-node=2",
        "--monitor-interval=0.1",
        "-m",
        "rprselect",
        *common,
        "--out",
        str(tmp_path / "two.csv"),
        "--cache",
        str(tmp_path / "c.jsonl"),
    ]
    multi = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert multi.returncode == 0, multi.stderr

    def rows(path: Path) -> list[dict[str, str]]:
        with open(path) as fh:
            return [
                {k: v for k, v in r.items() if k != "batch_seconds"} for r in csv.DictReader(fh)
            ]

    assert rows(tmp_path / "two.csv") == rows(tmp_path / "one.csv")
    assert sorted(tmp_path.glob("c.rank*.jsonl")), "each rank keeps its own cache"


def test_single_process_cache_resumed_by_two_gloo_ranks_and_back(
    pool_dir: Path, reference: Any, tmp_path: Path
) -> None:
    """One fingerprint and one row format: a cache written by score() in one process is resumed
    by a 2-rank torchrun job, and the job's per-rank caches by score() again (issue 11)."""
    from rprselect.pool import load_pool
    from rprselect.scoring import score

    out, cache = tmp_path / "out.json", tmp_path / "c.jsonl"
    first_six = load_pool(sorted(pool_dir.glob("vol0[0-5].npy")))
    score(_model(), first_six, cache=str(cache), progress=False, **SETTINGS)
    proc = _torchrun(2, "--pool", str(pool_dir), "--out", str(out), "--cache", str(cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    _assert_same(data["rows"], reference)
    ranks = data["ranks"]
    assert sum(r["cached"] for r in ranks) == 6, "the single process's six rows were reused"
    assert sum(r["scored"] for r in ranks) == N_GOOD - 6
    lines = {f: len(f.read_text().splitlines()) for f in tmp_path.glob("c*.jsonl")}
    with pytest.warns(UserWarning, match="vol99_blank"):
        again = score(_model(), load_pool(pool_dir), cache=str(cache), progress=False, **SETTINGS)
    assert {f: len(f.read_text().splitlines()) for f in tmp_path.glob("c*.jsonl")} == lines, (
        "nothing was scored again: every row came from the base file and the rank files"
    )
    _assert_same(list(again.rows()), reference)
