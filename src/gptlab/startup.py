"""The time from the command to a run's step 0, in phases: `ready in 3.1 s (command to step 0:
imports 2.2 s, config 0.3 s, ...)` on the console and `startup_s` in metrics.json.

Marks are set where one phase ends (the entry point, the run's build steps, the step-0
evaluation); each phase is the time since the mark before it. The first phase starts when the
process started (Linux: /proc/self/stat), or, where that cannot be read, when gptlab was first
imported. Standard library only: any layer may set a mark."""

from __future__ import annotations

import os
import time

_PROC_TICKS = "SC_CLK_TCK"


def process_age() -> float | None:
    """Seconds since this process started (Linux: its start time in /proc/self/stat against
    CLOCK_BOOTTIME, both counted from boot, to 1/100 s), or None where that cannot be read."""
    try:
        with open("/proc/self/stat") as f:
            # field 22, starttime in clock ticks since boot; counted after the ")" that ends the
            # command name, which may itself hold spaces
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf(_PROC_TICKS)
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux, or no /proc
        return None


class StartupClock:
    """Phases from the process's start (or from restart(), for the next job of a sweep in the
    same process) to step 0."""

    def __init__(self, origin: float, since: str):
        self.origin = self._last = origin  # time.perf_counter() values
        self.since = since  # what the origin is: "command", "gptlab's import" or "run start"
        self.phases: dict[str, float] = {}
        self.total: float | None = None  # set by ready()

    def mark(self, phase: str) -> None:
        """The phase named ends now (a phase marked twice adds up)."""
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def ready(self, last_phase: str) -> float:
        """Step 0 begins: the last phase ends; returns the seconds from the origin."""
        self.mark(last_phase)
        self.total = self._last - self.origin
        return self.total

    def line(self) -> str:
        """`ready in 3.1 s (command to step 0: imports 2.2 s, ...)`."""
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in self.phases.items())
        return f"ready in {self.total:.1f} s ({self.since} to step 0: {parts})"

    def results(self) -> dict:
        """For metrics.json: startup_s and its phases."""
        return {
            "startup_s": None if self.total is None else round(self.total, 2),
            "startup_phases_s": {k: round(v, 2) for k, v in self.phases.items()},
        }


def _from_process_start() -> StartupClock:
    age = process_age()
    if age is None or age < 0:
        return StartupClock(_IMPORTED, "gptlab's import")
    return StartupClock(time.perf_counter() - age, "command")


_IMPORTED = time.perf_counter()  # the fallback origin: gptlab/__init__.py imports this module first
CLOCK = _from_process_start()


def restart() -> StartupClock:
    """A new clock from now, for a run after the first in this process (the next job of a
    sweep): its start-up is its own build steps, not the process's imports."""
    global CLOCK
    CLOCK = StartupClock(time.perf_counter(), "run start")
    return CLOCK


def mark(phase: str) -> None:
    CLOCK.mark(phase)
