"""Which coordinator to talk to, when a client or worker is given several (a leader and its standbys).

A standby answers every message with ``NotLeader``, naming the leader it knows of (its
lease may still run after the leader died) or none (the lease ran out; a standby takes
over within a moment).  :class:`CoordinatorList` turns those answers and the connection
events a peer sees into one decision, the endpoint to use next, so that the client and the
worker follow a leader the same way:

- a named leader is tried at once, unless its connection dropped recently: a standby
  names a killed leader until its lease runs out, and going back to it would only wait
  out a dead address.  A name that is not a ``tcp://HOST:PORT`` endpoint is ignored, and
  a leader outside the configured list joins it (so a peer given one endpoint can still
  move on when the leader it followed dies), up to :data:`MAX_COORDINATORS`;
- with no usable name, stay where we are when that coordinator is up (a standby about
  to take over answers soon), else rotate to the next endpoint not seen down recently;
- only a dropped connection marks a coordinator down; one that is merely slow to answer
  is left for the next, but followed again as soon as a standby names it.

Pure logic (time comes in as arguments), so it is tested without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence

from actorsched.config import MAX_COORDINATORS, check_endpoint
from actorsched.errors import ConfigError

LINK_TIMEOUT_S = 2.0
"""With several coordinators, ZeroMQ's own heartbeats (PING/PONG every third of this, answered by libzmq's I/O
thread, so no Python pause delays them) drop a connection silent this long: a leader whose host died without
closing its connections counts as down within it."""

RECENTLY_DOWN_S = 5.0
"""How long an endpoint whose connection dropped is avoided while another one may lead: a standby names a
killed leader until its lease (3 s by default) has run out."""


class CoordinatorList:
    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one coordinator endpoint is needed")
        self.endpoints = list(dict.fromkeys(endpoints))
        self.current = self.endpoints[0]
        self._down_at: dict[str, float] = {}

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    def note_down(self, endpoint: str, now: float) -> None:
        if endpoint in self.endpoints:  # so at most MAX_COORDINATORS entries
            self._down_at[endpoint] = now

    def note_up(self, endpoint: str) -> None:
        self._down_at.pop(endpoint, None)

    def recently_down(self, endpoint: str, now: float) -> bool:
        at = self._down_at.get(endpoint)
        return at is not None and now - at < RECENTLY_DOWN_S

    def after_not_leader(self, leader: str, now: float) -> str:
        """Where to go after the current coordinator said it does not lead and named ``leader`` ("" if none)."""
        if leader and leader != self.current and not self.recently_down(leader, now) and self._admits(leader):
            return self._go(leader)
        return self.current  # it answers, so it is up: it or another takes over within a lease

    def after_silence(self, now: float, dropped: bool = True) -> str:
        """Where to go after the current coordinator dropped the connection (``dropped``: it is marked down)
        or stayed silent too long (not marked: it may only be busy)."""
        if dropped:
            self.note_down(self.current, now)
        return self._go(self.next_candidate(now))

    def _admits(self, leader: str) -> bool:
        if leader in self.endpoints:
            return True
        if len(self.endpoints) >= MAX_COORDINATORS:
            return False
        try:
            check_endpoint(leader, "a leader named by a standby")
        except ConfigError:
            return False
        return True

    def next_candidate(self, now: float) -> str:
        """The next endpoint after the current one, preferring those not seen down recently."""
        start = self.endpoints.index(self.current) if self.current in self.endpoints else -1
        order = [self.endpoints[(start + i) % len(self.endpoints)] for i in range(1, len(self.endpoints) + 1)]
        fresh = [e for e in order if not self.recently_down(e, now)]
        if fresh:
            return fresh[0]
        return min(order, key=lambda e: self._down_at.get(e, 0.0))  # all down lately: the one down longest

    def _go(self, endpoint: str) -> str:
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        self.current = endpoint
        return endpoint
