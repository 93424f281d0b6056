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
from cli_models import tiny_cnn

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
    np.testing.assert_array_equal(second.batch_seconds, first.batch_seconds)
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


def test_same_ids_other_pixels_are_scored_again(pool, tmp_path: Path) -> None:
    """A cache keys rows by id *and* content: a pool with the same ids and other pixels is
    scored afresh, never served the first pool's rows (issue 15, item 1)."""
    path = tmp_path / "c.jsonl"
    a = score(tiny_cnn(), pool, k=3, cache=str(path), progress=False)
    other = pool.flip(-1).clone()
    other[0] = pool[0]  # one sample unchanged: its row is reused
    b = score(tiny_cnn(), other, k=3, cache=str(path), progress=False)
    fresh = score(tiny_cnn(), other, k=3, progress=False)
    np.testing.assert_allclose(b.rpr_curve, fresh.rpr_curve, rtol=1e-6, atol=1e-9)
    assert not np.allclose(b.rpr_curve[1:], a.rpr_curve[1:])
    np.testing.assert_array_equal(b.rpr_curve[0], a.rpr_curve[0])
    lines = _data_lines(path)
    assert len(lines) == 2 * len(pool) - 1, "the unchanged sample was not scored twice"
    c = score(tiny_cnn(), other, k=3, cache=str(path), progress=False)  # all cached now
    assert len(_data_lines(path)) == len(lines)
    np.testing.assert_array_equal(c.rpr_curve, b.rpr_curve)


def test_single_process_cache_resumes_under_the_distributed_driver_and_back(
    pool, tmp_path: Path
) -> None:
    """One fingerprint, one row format: either driver resumes the other's cache."""
    from rprselect.distributed import score as score_torchrun

    path = tmp_path / "c.jsonl"
    one = score(tiny_cnn(), pool[:5], k=3, cache=str(path), batch_size=2, progress=False)
    both = score_torchrun(tiny_cnn(), pool, k=3, cache=str(path), batch_size=2, progress=False)
    assert (both.ranks[0].cached, both.ranks[0].scored) == (5, 4)
    np.testing.assert_allclose(both.rpr_curve[:5], one.rpr_curve, rtol=1e-12)
    path2 = tmp_path / "d.jsonl"
    score_torchrun(tiny_cnn(), pool[:6], k=3, cache=str(path2), batch_size=2, progress=False)
    before = sum(len(_data_lines(f)) for f in tmp_path.glob("d*.jsonl"))
    again = score(tiny_cnn(), pool, k=3, cache=str(path2), batch_size=2, progress=False)
    after = sum(len(_data_lines(f)) for f in tmp_path.glob("d*.jsonl"))
    assert after - before == 3, "only the 3 samples no rank had cached were scored"
    np.testing.assert_allclose(again.rpr_curve, both.rpr_curve, rtol=1e-12)
