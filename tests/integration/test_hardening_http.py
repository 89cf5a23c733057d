"""Issue 9 #9: idle connections to the status page cost no thread, time out, and never stop the page."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actorsched.http import REQUEST_TIMEOUT_S
from actorsched.localcluster import LocalCluster, wait_until

IDLE_CONNECTIONS = 300


@pytest.fixture
def open_connections() -> Iterator[Callable[[str, int], list[socket.socket]]]:
    """``open_connections("HOST:PORT", n)`` -> n connected TCP sockets, closed at teardown."""
    opened: list[socket.socket] = []

    def make(endpoint: str, count: int) -> list[socket.socket]:
        host, _, port = endpoint.rpartition(":")
        for _ in range(count):
            opened.append(socket.create_connection((host, int(port)), timeout=10))
        return opened[-count:]

    yield make
    for sock in opened:
        sock.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line in /proc/{pid}/status")


def _healthz(cluster: LocalCluster) -> str:
    with urllib.request.urlopen(f"http://{cluster.http_endpoint}/healthz", timeout=5) as reply:
        return reply.read().decode()


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_hundreds_of_idle_connections_add_no_thread_and_leave_the_page_answering(
        make_cluster: Callable[..., LocalCluster],
        open_connections: Callable[[str, int], list[socket.socket]]) -> None:
    cluster = make_cluster(workers=0)
    assert cluster.coordinator is not None
    assert _healthz(cluster) == "ok\n"
    threads_before = _threads(cluster.coordinator.pid)

    idle = open_connections(cluster.http_endpoint, IDLE_CONNECTIONS)
    # Accepted in order, so once this is answered the server has accepted every idle one.
    assert _healthz(cluster) == "ok\n"
    assert _threads(cluster.coordinator.pid) <= threads_before + 1

    wait_until(lambda: all(_closed_by_server(sock) for sock in idle), REQUEST_TIMEOUT_S + 20,
               f"the server to close {IDLE_CONNECTIONS} idle connections")


def test_connections_that_send_half_a_request_do_not_stop_the_page(
        make_cluster: Callable[..., LocalCluster],
        open_connections: Callable[[str, int], list[socket.socket]]) -> None:
    cluster = make_cluster(workers=0)
    trickling = open_connections(cluster.http_endpoint, 10)
    for sock in trickling:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    assert _healthz(cluster) == "ok\n"
    wait_until(lambda: all(_closed_by_server(sock) for sock in trickling), REQUEST_TIMEOUT_S + 20,
               "the server to close connections that never finished their request")
