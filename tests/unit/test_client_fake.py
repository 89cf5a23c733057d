"""A scripted fake coordinator for the client and CLI unit tests, and tests of the fake itself.

``FakeCoordinator`` binds a real ZeroMQ ROUTER on an ephemeral loopback port and runs
a bounded poll loop in a thread.  By default it behaves like a tiny coordinator (tasks
submitted are QUEUED, watches report final tasks, cancels cancel); tests replace
``handler`` to script other answers, call ``finish`` to make a task final, and read
``received`` to see what the client sent.  All state lives on the fake's thread; the
test thread talks to it through ``run`` (a queue of functions).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from actorsched import protocol
from actorsched.protocol import Message, TaskInfo

Handler = Callable[["FakeCoordinator", Message], list[Message] | None]
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class FakeCoordinator:
    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.codec = protocol.Codec(protocol.CLIENT_MESSAGES)
        self.received: queue.Queue[Message] = queue.Queue()
        self.handler: Handler = FakeCoordinator.default_handler
        self.tasks: dict[str, TaskInfo] = {}
        self.watches: dict[int, set[str]] = {}
        self.peer: bytes | None = None
        self._calls: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="fake-coordinator", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- loop (fake's thread)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                ready = self.socket.poll(10)
                while True:  # after the poll: calls made before a request was sent run before it
                    try:
                        self._calls.get_nowait()()
                    except queue.Empty:
                        break
                if not ready:
                    continue
                ident, *frames = self.socket.recv_multipart()
                self.peer = ident
                message = self.codec.decode(frames)
                self.received.put(message)
                for reply in self.handler(self, message) or []:
                    self.send(reply)
        except BaseException as exc:  # surfaced by stop(), so a broken fake fails the test loudly
            self._error = exc
        finally:
            self.socket.close(linger=0)

    def send(self, message: Message) -> None:
        self.send_raw(protocol.encode(message))

    def send_raw(self, frames: list[bytes]) -> None:
        assert self.peer is not None, "no client has talked to the fake yet"
        self.socket.send_multipart([self.peer, *frames])

    def default_handler(self, message: Message) -> list[Message] | None:
        if isinstance(message, protocol.Submit):
            for spec in message.tasks:
                self.tasks.setdefault(spec.task_id, TaskInfo(spec.task_id, "QUEUED", spec.name, spec.priority))
            replies: list[Message] = [protocol.SubmitReply(message.request_id, [s.task_id for s in message.tasks])]
            if message.watch:
                replies += self.default_handler(protocol.Watch(message.request_id,
                                                               [s.task_id for s in message.tasks])) or []
            return replies
        if isinstance(message, protocol.Query):
            return [protocol.QueryReply(message.request_id,
                                        [self.tasks[t] for t in message.task_ids if t in self.tasks])]
        if isinstance(message, protocol.Watch):
            known = [self.tasks.get(t, TaskInfo(t, "NOT_FOUND")) for t in message.task_ids]
            done = [info for info in known if info.state in (*FINAL, "NOT_FOUND")]
            self.watches[message.request_id] = set(message.task_ids) - {i.task_id for i in done}
            return [protocol.TasksDone(message.request_id, done)] if done else None
        if isinstance(message, protocol.Unwatch):
            self.watches.pop(message.request_id, None)
            return None
        if isinstance(message, protocol.Cancel):
            cancelled = []
            for task_id in message.task_ids:
                info = self.tasks.get(task_id)
                if info is not None and info.state not in FINAL:
                    cancelled.append(task_id)
            for task_id in cancelled:
                self._finish(TaskInfo(task_id, "CANCELLED", self.tasks[task_id].name))
            return [protocol.CancelReply(message.request_id, cancelled)]
        if isinstance(message, protocol.ListWorkers):
            return [protocol.WorkersReply(message.request_id, [protocol.WorkerInfo(
                "w1", "host-a", 4242, 4, 1, 0.25, 12.5, 40.0, "ALIVE", [], 0.4, 17, "closed")])]
        if isinstance(message, protocol.GetStats):
            return [protocol.StatsReply(message.request_id, {"tasks_queued": 3, "workers": {"alive": 1}})]
        if isinstance(message, protocol.ListTasks):  # newest first: the last known first
            rows = [protocol.TaskInfo(i.task_id, i.state, i.name, i.priority, i.attempt, i.worker_id, None,
                                      i.error, [], "", i.updated_at)
                    for i in reversed(self.tasks.values())
                    if message.state in (None, i.state) and message.name in (None, i.name)
                    and message.worker in (None, i.worker_id) and i.task_id.startswith(message.id_prefix or "")]
            return [protocol.TaskList(message.request_id, rows[:message.limit], len(rows) > message.limit)]
        return None

    def _finish(self, info: TaskInfo) -> None:
        self.tasks[info.task_id] = info
        for rid, ids in list(self.watches.items()):
            if info.task_id in ids:
                ids.discard(info.task_id)
                self.send(protocol.TasksDone(rid, [info]))
                if not ids:
                    del self.watches[rid]

    # ---------------------------------------------------------------- test thread

    def run(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the fake's thread, after what it is doing now."""
        self._calls.put(function)

    def finish(self, task_id: str, state: str = "SUCCEEDED", value: Any = None,
               error: protocol.ErrorInfo | None = None, output: str = "", updated_at: float = 0.0) -> None:
        self.run(lambda: self._finish(TaskInfo(task_id, state, "actorsched.tasks:echo", 0, 1, "w1", value, error,
                                               [], output, updated_at)))

    def next_message(self, timeout_s: float = 5.0) -> Message:
        return self.received.get(timeout=timeout_s)

    def next_of(self, kind: type[Message], timeout_s: float = 5.0) -> Any:
        """The next received message of ``kind``, skipping others."""
        while True:
            message = self.next_message(timeout_s)
            if isinstance(message, kind):
                return message

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.context.term()
        assert not self._thread.is_alive(), "fake coordinator thread did not stop"
        if self._error is not None:
            raise self._error


@pytest.fixture
def fake() -> Iterator[FakeCoordinator]:
    coordinator = FakeCoordinator()
    try:
        yield coordinator
    finally:
        coordinator.stop()


def test_fake_coordinator_answers_a_raw_dealer_and_records_what_it_got(fake: FakeCoordinator) -> None:
    with zmq.Context() as context, context.socket(zmq.DEALER) as dealer:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(fake.endpoint)
        dealer.send_multipart(protocol.encode(protocol.GetStats(7)))
        assert dealer.poll(5000)
        reply = protocol.Codec(protocol.TO_CLIENT_MESSAGES).decode(dealer.recv_multipart())
    assert isinstance(reply, protocol.StatsReply) and reply.request_id == 7
    assert isinstance(fake.next_message(), protocol.GetStats)
