"""A circuit breaker per worker: stop feeding a worker whose attempts keep failing.

Theory of operation
-------------------
Only failures that point at the worker count.  A success counts for its worker (the
registry sees it with the outcome); a failed attempt counts against its worker only if
the same task later succeeded on *another* worker (the task is fine, the worker was
not), which the task queue judges when that success comes.  A task that fails everywhere blames no one, so a
bad task cannot open every worker's breaker.

States: CLOSED (normal) -> OPEN when, within ``window_s``, at least ``min_attempts``
judged attempts have a failure ratio above ``failure_ratio``; an OPEN worker gets no
tasks for ``open_s``.  Then HALF_OPEN: one probe task at a time; a judged success
closes the breaker, a judged failure opens it again.

The window is kept as counts per slice of ``window_s / SLICES`` seconds, not one entry
per attempt: its memory is bounded by the slice count whatever the task rate (one entry
per attempt held a minute of attempts, ~60 bytes each: 19 MB at 5,000 tasks/s).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from actorsched.settings import BreakerConfig


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


SLICES = 60  # the window's resolution: an attempt leaves it up to window_s / SLICES late


@dataclass(slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    opened_until: float = 0.0
    judged: deque[list[float]] = field(default_factory=deque)  # [slice start, attempts, failures], oldest first
    attempts: int = 0  # sums over ``judged``, kept in step so judging is O(1)
    failures: int = 0

    def judge(self, ok: bool, now: float, config: BreakerConfig) -> BreakerState | None:
        """Record one judged attempt; returns the new state if it changed."""
        if self.state is BreakerState.HALF_OPEN:
            self._clear()
            return self._enter(BreakerState.CLOSED if ok else BreakerState.OPEN, now, config)
        judged = self.judged
        width = config.window_s / SLICES
        if not judged or now >= judged[-1][0] + width:
            judged.append([now, 0, 0])
        newest = judged[-1]
        newest[1] += 1
        newest[2] += not ok
        self.attempts += 1
        self.failures += not ok
        horizon = now - config.window_s
        while judged[0][0] + width <= horizon:  # a slice leaves once all of it is past the window
            _, attempts, failures = judged.popleft()
            self.attempts -= int(attempts)
            self.failures -= int(failures)
        if self.state is BreakerState.CLOSED and self.attempts >= config.min_attempts \
                and self.failures / self.attempts > config.failure_ratio:
            self._clear()
            return self._enter(BreakerState.OPEN, now, config)
        return None

    def _clear(self) -> None:
        self.judged.clear()
        self.attempts = 0
        self.failures = 0

    def tick(self, now: float, config: BreakerConfig) -> BreakerState | None:
        if self.state is BreakerState.OPEN and now >= self.opened_until:
            return self._enter(BreakerState.HALF_OPEN, now, config)
        return None

    def _enter(self, state: BreakerState, now: float, config: BreakerConfig) -> BreakerState:
        self.state = state
        if state is BreakerState.OPEN:
            self.opened_until = now + config.open_s
        return state
