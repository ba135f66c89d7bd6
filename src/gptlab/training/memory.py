"""A run's peak memory: what experiment 5 asks about ("how does memory grow with size").

On a GPU, the most memory PyTorch's allocator held (torch.cuda.max_memory_allocated). On CPU, the
process's peak resident set size. Both are reset when a run starts, so every job of a sequential
sweep -- all in one process -- reports its own peak, not the largest of the jobs before it.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def reset_peak(cuda: bool) -> None:
    if cuda and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        _CLEAR_REFS.write_text("5")  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass  # elsewhere (macOS) the peak stays the process's since it started (ru_maxrss)


def _status_bytes(field: str) -> int | None:
    """A size line of /proc/self/status (VmHWM: peak, VmRSS: now), in bytes; None without /proc."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak(cuda: bool) -> tuple[int, str]:
    """(bytes, kind): kind is "cuda" (allocator peak on the GPU) or "rss" (resident memory)."""
    if cuda and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda"
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm, "rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(rss if sys.platform == "darwin" else rss * 1024), "rss"


def current(cuda: bool) -> int:
    """Memory in use now, in bytes, of the kind peak() reports (0 where it cannot be read)."""
    if cuda and torch.cuda.is_available():
        return int(torch.cuda.memory_allocated())
    return _status_bytes("VmRSS") or 0
