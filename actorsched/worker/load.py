"""The worker's load sampler: system-wide CPU and memory use from psutil.

Sampled once per heartbeat, never per task.  ``cpu_percent(interval=None)`` measures
since the previous call, so the sampler primes it at construction and each heartbeat
then reports the CPU use over the last heartbeat interval without blocking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class LoadSample:
    cpu_percent: float
    memory_percent: float


class LoadSampler:
    """Reads host load; the two readers are injectable so tests need no real host."""

    def __init__(self, cpu_percent: Callable[[], float] | None = None,
                 memory_percent: Callable[[], float] | None = None) -> None:
        self._cpu_percent = cpu_percent or (lambda: float(psutil.cpu_percent(interval=None)))
        self._memory_percent = memory_percent or (lambda: float(psutil.virtual_memory().percent))
        self._cpu_percent()  # prime: the first reading of cpu_percent(None) is meaningless

    def sample(self) -> LoadSample:
        return LoadSample(float(self._cpu_percent()), float(self._memory_percent()))
