"""Peak memory of one benchmark step: CPU peak RSS above a baseline, or CUDA allocations.

On CPU the probe resets the process's peak RSS (``VmHWM``) through ``/proc/self/clear_refs``
and reports the rise above the RSS at the reset; on a GPU it uses
``torch.cuda.max_memory_allocated`` above what was allocated at the reset.
"""

from __future__ import annotations

import ctypes

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak memory above a baseline: CPU peak RSS (VmHWM reset per step), or CUDA allocations."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.base = 0
        self.exact = self.cuda

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        try:  # hand freed heap back so that the baseline is what is live
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.exact = True
        except OSError:  # peak since process start instead
            self.exact = False
        self.base = _proc_status("VmRSS")

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated() - self.base)
        return max(0, _proc_status("VmHWM") - self.base)


def _proc_status(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
