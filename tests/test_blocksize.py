"""Block size from measured pass times (the GPU path's rule, exercised on the CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor

from rprselect.operator import LinearOperator
from rprselect.solvers.blocksize import choose_block_size, measure_pass_times


class _Timed(LinearOperator):
    """Identity whose pass takes ``base * (1 + slope (b - 1))`` seconds for ``b`` vectors."""

    def __init__(self, base: float, slope: float, device: str = "cpu") -> None:
        super().__init__((3,), (3,), batch=1, dtype=torch.float32, device=device)
        self.base, self.slope, self.calls = base, slope, 0

    def _wait(self, T: Tensor) -> Tensor:
        self.calls += 1
        time.sleep(self.base * (1 + self.slope * (T.shape[1] - 1)))
        return T

    def _matmat(self, Y: Tensor) -> Tensor:
        return self._wait(Y)

    def _rmatmat(self, Z: Tensor) -> Tensor:
        return self._wait(Z)


def test_measured_times_pick_the_cheapest_block_and_are_cached(tmp_path: Path) -> None:
    cache = tmp_path / "blocks.json"
    op = _Timed(0.01, 0.1)  # modelled cost relative to b = 1: b=4 0.72, b=16 1.09
    b, times = choose_block_size(op, "net", (1, 4, 16), cache=cache)
    assert b == 4
    assert times[16] > times[1] and times[16] < 16 * times[1]
    assert (op.n_products, op.n_passes) == (0, 0)  # a measurement is not solver work
    calls = op.calls
    assert choose_block_size(op, "net", (1, 4, 16), cache=cache)[0] == 4
    assert op.calls == calls  # read back from the cache, not measured again
    assert len(json.loads(cache.read_text())) == 1
    saturated = _Timed(0.02, 1.0)  # a pass costs b times one: a block never pays
    assert choose_block_size(saturated, "other", (1, 4), cache=cache)[0] == 1
    assert len(json.loads(cache.read_text())) == 2


def test_measure_pass_times_runs_on_the_operators_device() -> None:
    op = _Timed(0.0, 0.0, device="cpu")
    times = measure_pass_times(op, (1, 3), repeats=1)
    assert set(times) == {1, 3} and all(t >= 0 for t in times.values())
    assert op.calls == 2 * 2 * 2  # warm-up + 1 repeat, A and Aᵀ, per size


def test_bad_candidates() -> None:
    with pytest.raises(ValueError, match="candidates must be block sizes >= 1"):
        choose_block_size(_Timed(0.0, 0.0), "net", (0, 2))
