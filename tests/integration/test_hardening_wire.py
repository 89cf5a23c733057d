"""Issue 9 #1 against a real coordinator: a deeply nested wrong value is a bad frame, not a crash."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from actorsched import protocol as p
from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until

TIMEOUT_S = 30.0
DEPTH = 1020
"""Past Python's recursion limit (1,000), within msgpack's nesting limit (1,024)."""


@pytest.fixture
def raw_dealer() -> Iterator[Callable[[str], zmq.Socket[bytes]]]:
    """``raw_dealer(endpoint)`` -> a bare DEALER socket connected there, closed at teardown."""
    sockets: list[zmq.Socket[bytes]] = []

    def make(endpoint: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 5000)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close(linger=0)


def _deep(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("side", ["client", "worker"])
def test_a_wrong_value_nested_a_thousand_deep_is_dropped_and_the_coordinator_lives(
        make_cluster: Callable[..., LocalCluster], raw_dealer: Callable[[str], zmq.Socket[bytes]],
        side: str) -> None:
    cluster = make_cluster(workers=0)
    with Client(cluster.client_endpoint, timeout_s=10.0) as client:
        counter = f"bad_{side}_frames"
        if side == "client":
            frames = [p.VERSION, p.Submit.KIND, msgpack.packb([_deep(DEPTH), [], False])]
        else:
            frames = [p.VERSION, p.Register.KIND, msgpack.packb([_deep(DEPTH), "host", 1, 1, [], []])]
        raw_dealer(cluster.client_endpoint if side == "client" else cluster.worker_endpoint).send_multipart(frames)

        wait_until(lambda: client.stats()["transport"].get(counter, 0) == 1, TIMEOUT_S,
                   f"the coordinator to count the deep {side} frame")
        assert cluster.coordinator is not None and cluster.coordinator.poll() is None
        assert client.submit("actorsched.tasks:echo", 1).status() != "NOT_FOUND"
        assert "RecursionError" not in cluster.log_text()
