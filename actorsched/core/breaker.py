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


@dataclass(slots=True)
class Breaker:
    state: BreakerState = BreakerState.CLOSED
    opened_until: float = 0.0
    judged: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, ok), oldest first
    failures: int = 0  # failed entries in ``judged``, kept in step so judging is O(1)

    def judge(self, ok: bool, now: float, config: BreakerConfig) -> BreakerState | None:
        """Record one judged attempt; returns the new state if it changed."""
        if self.state is BreakerState.HALF_OPEN:
            self._clear()
            return self._enter(BreakerState.CLOSED if ok else BreakerState.OPEN, now, config)
        judged = self.judged
        judged.append((now, ok))
        self.failures += not ok
        horizon = now - config.window_s
        while judged[0][0] < horizon:
            self.failures -= not judged.popleft()[1]
        if self.state is BreakerState.CLOSED and len(judged) >= config.min_attempts \
                and self.failures / len(judged) > config.failure_ratio:
            self._clear()
            return self._enter(BreakerState.OPEN, now, config)
        return None

    def _clear(self) -> None:
        self.judged.clear()
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
