"""A run of device scalars (a loss per micro-batch, a gradient norm per optimizer step) kept
without a host sync, to be read in one go every few steps."""

from __future__ import annotations

import torch


class ScalarSeries:
    """Values written into one preallocated float32 buffer on their own device: appending is one
    copy kernel, with no host sync and no allocation that outlives the step. (A Python list of
    0-dim tensors would leave hundreds of small blocks scattered between the step's large
    activation buffers, and the allocator could then neither reuse nor return that memory: the
    CPU recipe's peak resident memory grew by 10-30 MB that way.)"""

    def __init__(self, capacity: int = 64):
        self._capacity = capacity
        self._buf: torch.Tensor | None = None
        self._n = 0

    def append(self, value: torch.Tensor) -> None:
        if self._buf is None:
            self._buf = torch.empty(self._capacity, dtype=torch.float32, device=value.device)
        elif self._n == len(self._buf):  # rare: more values between two reads than ever before
            self._buf = torch.cat([self._buf, torch.empty_like(self._buf)])
        self._buf[self._n].copy_(value.detach())
        self._n += 1

    def __len__(self) -> int:
        return self._n

    def values(self) -> torch.Tensor:
        """The values appended since the last clear(), as a 1-D view (still on the device)."""
        if self._buf is None:
            return torch.empty(0)
        return self._buf[: self._n]

    def clear(self) -> None:
        self._n = 0
