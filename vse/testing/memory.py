"""Resident memory of this process, and its peak while an action runs (Linux: /proc)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_growth(action: Callable[[], object], interval: float = 0.005) -> tuple[int, object]:
    """Peak resident memory above the level before ``action``, sampled every ``interval`` s while it runs."""
    baseline, peak, done = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            done.wait(interval)  # wakes at once when the action ends

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return max(0, peak[0] - baseline), result
