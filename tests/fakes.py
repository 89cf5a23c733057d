"""Fakes shared by the unit and integration tests (``tests`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import time

import zmq

from actorsched.protocol import WORKER_MESSAGES, Codec, Message, Results, TaskOutcome, encode


class FakeCoordinator:
    """A ROUTER on an ephemeral loopback port that records what the worker sends."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.codec = Codec(WORKER_MESSAGES)
        self.peer = b""
        self.seen: list[Message] = []

    def send(self, message: Message) -> None:
        self.router.send_multipart([self.peer, *encode(message)])

    def expect(self, kind: type[Message], timeout_s: float = 10.0) -> Message:
        """The next message of ``kind``; the others received on the way are kept in ``seen``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if self.router.poll(int(left * 1000) + 1):
                peer, *frames = self.router.recv_multipart()
                self.peer = peer
                message = self.codec.decode(frames)
                self.seen.append(message)
                if isinstance(message, kind):
                    return message
        raise AssertionError(f"no {kind.__name__} within {timeout_s}s; seen: {[type(m).__name__ for m in self.seen]}")

    def outcomes(self, n: int, timeout_s: float = 10.0) -> dict[str, TaskOutcome]:
        found: dict[str, TaskOutcome] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < n:
            results = self.expect(Results, deadline - time.monotonic())
            assert isinstance(results, Results)
            found.update((o.task_id, o) for o in results.outcomes)
        return found

    def close(self) -> None:
        self.router.close(0)
        self.context.term()
