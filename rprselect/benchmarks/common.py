"""What every benchmark shares: stage timers, JSON and Markdown output, the machine's name."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from rprselect._report import markdown_table, out_dir, write_json

__all__ = ["Stopwatch", "machine_description", "markdown_table", "write_json", "out_dir"]


class Stopwatch:
    """Wall time of named stages: ``with sw("train"): ...``; ``sw.seconds`` maps name -> s."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def machine_description(device: str | torch.device = "cpu") -> str:
    """E.g. ``"AMD EPYC, 2 cores"`` or the CUDA device name."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, torch {torch.__version__}"
