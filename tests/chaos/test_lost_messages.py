"""Messages lost on the wire, against a real coordinator, with a scripted worker peer.

The peer is a raw ZeroMQ DEALER speaking the real protocol from this test, so it can
drop exactly the messages a flaky network would: its heartbeats while task traffic
still flows, or an assignment while its heartbeats still flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import zmq

from actorsched import protocol as p
from actorsched.localcluster import LocalCluster

pytestmark = pytest.mark.chaos


class Peer:
    def __init__(self, endpoint: str, worker_id: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, f"{worker_id}/1/1".encode())
        self.socket.connect(endpoint)
        self.codec = p.Codec(p.TO_WORKER_MESSAGES)
        self.worker_id = worker_id

    def send(self, message: p.Message) -> None:
        self.socket.send_multipart(p.encode(message))

    def receive(self, timeout_s: float) -> p.Message | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return self.codec.decode(self.socket.recv_multipart())

    def register(self, slots: int) -> p.Welcome:
        self.send(p.Register(self.worker_id, "scripted", 1, slots, [], []))
        welcome = self.receive(10.0)
        assert isinstance(welcome, p.Welcome), welcome
        return welcome

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def ok(assignment: p.Assignment) -> p.Results:
    return p.Results([p.TaskOutcome(assignment.task_id, assignment.epoch, assignment.attempt, True,
                                    assignment.args[0] if assignment.args else None, None, 0.01)])


def test_a_worker_whose_heartbeats_are_lost_but_whose_results_flow_is_not_convicted(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--worker-timeout", "2"])
    peer = Peer(cluster.worker_endpoint, "no-heartbeats")
    try:
        peer.register(slots=1)
        with cluster.client() as client:
            handles = client.submit_many({"name": "actorsched.tasks:echo", "args": [i]} for i in range(40))
            deadline = time.monotonic() + 60
            answered = 0
            started = time.monotonic()
            while answered < len(handles) and time.monotonic() < deadline:
                message = peer.receive(1.0)
                if isinstance(message, p.Assign):
                    for assignment in message.assignments:
                        # ~0.1 s per task: 40 tasks span twice the worker timeout, no heartbeat sent.
                        wait = time.monotonic() + 0.1
                        while time.monotonic() < wait:
                            peer.socket.poll(10)
                        peer.send(ok(assignment))
                        answered += 1
            assert time.monotonic() - started > 4.0  # longer than twice worker_timeout_s
            assert client.gather(handles, timeout=30) == list(range(40))
            assert all(h.info().attempt == 1 for h in handles)
            assert client.stats()["workers"]["removed"] == 0
    finally:
        peer.close()


def test_an_assignment_lost_on_the_way_to_a_live_worker_is_requeued_without_counting_a_death(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--worker-timeout", "5"])
    peer = Peer(cluster.worker_endpoint, "drops-one")
    try:
        interval = peer.register(slots=1).heartbeat_interval_s
        with cluster.client() as client:
            handle = client.submit("actorsched.tasks:echo", "kept")
            dropped = False
            next_beat = 0.0
            deadline = time.monotonic() + 60
            while not handle.done() and time.monotonic() < deadline:
                if time.monotonic() >= next_beat:
                    peer.send(p.Heartbeat(1.0, 1.0, []))  # it holds nothing: the first Assign was lost
                    next_beat = time.monotonic() + interval / 2
                message = peer.receive(0.05)
                if isinstance(message, p.Assign):
                    if not dropped:
                        dropped = True
                        continue
                    for assignment in message.assignments:
                        peer.send(ok(assignment))
            assert dropped and handle.result(timeout=10) == "kept"
            info = handle.info()
            assert info.attempt == 2 and [h.outcome for h in info.history] == ["assignment lost", "succeeded"]
            assert client.stats()["queue"]["lost_assignments"] == 1
            assert [w.worker_id for w in client.workers()] == ["drops-one"]
    finally:
        peer.close()
