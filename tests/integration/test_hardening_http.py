"""Issue 9 #9: idle connections to the status page cost no thread, time out, and never stop the page.

Issue 10 #1: the dashboard's routes take no path outside its own files, answer bad
filters with the reason, and a page without a token answers only requests addressed
to loopback (DNS rebinding).
"""

from __future__ import annotations

import http.client
import json
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


def _get(cluster: LocalCluster, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    address, _, port = cluster.http_endpoint.rpartition(":")
    conn = http.client.HTTPConnection(address, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def test_without_a_token_only_requests_addressed_to_loopback_are_answered(
        make_cluster: Callable[..., LocalCluster]) -> None:
    """A site that rebinds its own name to 127.0.0.1 sends its name as Host: refused, whatever the path."""
    cluster = make_cluster(workers=0)
    port = cluster.http_endpoint.rpartition(":")[2]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "127.0.0.2"):
        assert _get(cluster, "/healthz", host)[0] == 200, host
    for host in (f"attacker.example:{port}", "attacker.example", f"10.0.0.1:{port}", "127.0.0.1.nip.io"):
        for path in ("/api/overview", "/status", "/"):
            code, _, body = _get(cluster, path, host)
            assert code == 403 and b"loopback" in body and b"token_file" in body, (host, path)


def test_the_dashboard_serves_only_its_own_files_with_a_strict_policy(
        make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0)
    for path in ("/", "/dashboard"):
        code, headers, body = _get(cluster, path)
        assert code == 200 and headers["content-type"].startswith("text/html") and b"dashboard/app.js" in body
        assert "script-src 'self'" in headers["content-security-policy"]  # no inline script, no other origin
        assert headers["x-content-type-options"] == "nosniff"
    assert _get(cluster, "/dashboard/app.js")[1]["content-type"].startswith("text/javascript")
    for path in ("/dashboard/../http.py", "/dashboard/..%2Fhttp.py", "/dashboard/%2e%2e/config.py",
                 "/dashboard/__init__.py", "/dashboard//etc/passwd", "/dashboard/dashboard/app.js"):
        assert _get(cluster, path)[0] == 404, path
    assert _get(cluster, "/dashboard/")[1]["location"] == "/dashboard"  # where its relative links work


def test_the_dashboards_json_answers_bad_filters_with_the_reason(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0)
    code, _, body = _get(cluster, "/api/tasks?state=DONE")
    assert code == 400 and "SUCCEEDED" in json.loads(body)["error"]
    code, _, body = _get(cluster, "/api/tasks?limit=lots")
    assert code == 400 and "limit" in json.loads(body)["error"]
    code, _, body = _get(cluster, "/api/tasks?limit=999999&name=" + "x" * 5000)
    assert code == 200 and json.loads(body)["limit"] == 1000 and json.loads(body)["tasks"] == []
    code, _, body = _get(cluster, "/api/task/never%2Fsubmitted")
    assert code == 404 and json.loads(body)["task"] == {**json.loads(body)["task"], "task_id": "never/submitted",
                                                         "state": "NOT_FOUND"}
    assert _get(cluster, "/api/nothing")[0] == 404
    overview = json.loads(_get(cluster, "/api/overview")[2])
    assert overview["workers"] == [] and overview["queue"]["tasks"] == 0
    assert overview["metrics"]["queue_wait"]["le"][0] > 0 and overview["metrics"]["run_time"] == {}
