"""Tests of the resumable score cache: kill and resume, stale fingerprints, torn writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_models import one_thread, tiny_cnn  # noqa: F401

from rprselect.cache import ScoreCache, weights_hash
from rprselect.scoring import ScoreTable, score

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
N = 40

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from torch.utils.data import Dataset
    torch.set_num_threads(1)
    from cli_models import tiny_cnn
    from rprselect.scoring import score

    class Slow(Dataset):
        def __init__(self, X, delay):
            self.X, self.delay = X, delay
        def __len__(self):
            return len(self.X)
        def __getitem__(self, i):
            time.sleep(self.delay)
            return self.X[i]

    X = torch.rand({n}, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    table = score(tiny_cnn(), Slow(X, float(sys.argv[2])), k=3, solver="dense", batch_size=4,
                  cache=sys.argv[1], progress=False, ids=[f"x{{i}}" for i in range(len(X))])
    table.to_csv(sys.argv[3])
    """
).format(n=N)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _data_lines(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


def test_killed_run_resumes_without_loss_or_repeats(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    cache, out = tmp_path / "cache.jsonl", tmp_path / "out.csv"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cache), "0.05", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if cache.exists() and len(_data_lines(cache)) >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: " + (
            proc.stderr.read().decode() if proc.stderr else ""
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done_before = len(_data_lines(cache))
    assert 8 <= done_before < N, done_before

    subprocess.run(
        [sys.executable, str(script), str(cache), "0", str(out)],
        env=_env(),
        check=True,
        timeout=120,
        capture_output=True,
    )
    rows = _data_lines(cache)
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(f"x{i}" for i in range(N)), "every id exactly once"
    assert len(ids) == len(set(ids)) == N

    X = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    fresh = score(
        tiny_cnn(), X, k=3, solver="dense", progress=False, ids=[f"x{i}" for i in range(N)]
    )
    resumed = ScoreTable.from_csv(out)
    assert resumed.ids == fresh.ids
    np.testing.assert_allclose(resumed.rpr_curve, fresh.rpr_curve, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(resumed.singular_values, fresh.singular_values, rtol=1e-5)


@pytest.fixture
def pool() -> torch.Tensor:
    return torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_second_run_reads_everything_from_the_cache(pool, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    first = score(tiny_cnn(), pool, k=3, cache=str(path), batch_size=4, progress=False)
    before = path.read_bytes()
    second = score(tiny_cnn(), pool, k=3, cache=str(path), batch_size=2, progress=False)
    assert path.read_bytes() == before, "nothing is scored (or written) twice"
    np.testing.assert_array_equal(second.rpr_curve, first.rpr_curve)
    np.testing.assert_array_equal(second.seconds, first.seconds)
    assert len(_data_lines(path)) == len(pool)


@pytest.mark.parametrize("change", ["k", "tol", "solver", "weights", "labels"])
def test_stale_cache_is_refused(pool, tmp_path: Path, change: str) -> None:
    path = tmp_path / "c.jsonl"
    score(tiny_cnn(), pool, k=3, cache=str(path), progress=False)
    model, kw = tiny_cnn(), {"k": 3}
    if change == "k":
        kw["k"] = 2
    elif change == "tol":
        kw["tol"] = 1e-6
    elif change == "solver":
        kw["solver"] = "dense"
    elif change == "labels":
        kw["labels"] = [0] * len(pool)
    else:
        with torch.no_grad():
            model[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(ValueError, match=rf"another model or other settings \({change}: "):
        score(model, pool, cache=str(path), progress=False, **kw)


def test_weights_hash_sees_every_weight() -> None:
    a, b = tiny_cnn(), tiny_cnn()
    assert weights_hash(a) == weights_hash(b)
    with torch.no_grad():
        b[-1].weight[-1, -1] *= -1
    assert weights_hash(a) != weights_hash(b)


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    c = ScoreCache(path, {"k": 1})
    c.append([{"id": "a", "v": 1.5}, {"id": "b", "v": 0.1}])
    with open(path, "ab") as fh:
        fh.write(b'{"id": "c", "v"')  # killed mid-write
    c2 = ScoreCache(path, {"k": 1})
    assert sorted(c2.rows) == ["a", "b"] and c2.rows["b"]["v"] == 0.1
    c2.append([{"id": "c", "v": 2.0}])
    assert [r["id"] for r in _data_lines(path)] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="already in the cache"):
        c2.append([{"id": "a"}])


def test_not_a_cache_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("id,rpr\n")
    with pytest.raises(ValueError, match="is not an rprselect score cache"):
        ScoreCache(path, {"k": 1})


def test_failures_are_not_cached_and_retried(pool, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    X = pool.clone()
    X[4] = float("nan")
    with pytest.warns(UserWarning, match="could not be scored"):
        t = score(tiny_cnn(), X, k=2, cache=str(path), errors="record", progress=False)
    assert "4" not in t.ids and [f.id for f in t.failures] == ["4"]
    X[4] = pool[4]  # the file got fixed
    t2 = score(tiny_cnn(), X, k=2, cache=str(path), progress=False)
    assert t2.ids == [str(i) for i in range(len(pool))] and not t2.failures
