"""Fixtures of the integration tests: a shared cluster, clients that are always closed, a dead port.

Clusters with a special shape come from ``make_cluster`` in ``tests/conftest.py``, which
stops every process it started, even when a test fails.  Tests that only need "a working
cluster" share one per module (``shared_client``): starting and draining real processes
costs a few seconds, and the whole suite must stay fast on a 2-core machine.  Such tests
leave no task unfinished, which the fixture checks after each of them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from actorsched import security
from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until

TASK_TIMEOUT_S = 30.0
"""Bound on waits for workers to register: generous for a noisy shared CI machine."""


OPEN_STATES = ("WAITING", "QUEUED", "ASSIGNED", "RUNNING", "RETRYING")


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Two workers of two slots each, shared by the tests of one module; stopped at module end."""
    base = tmp_path_factory.mktemp("shared-cluster")
    with LocalCluster(workers=2, slots=2, coordinator_args=["--worker-timeout", "2"],
                      log_dir=str(base), state_dir=str(base / "state")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def _shared_connection(shared_cluster: LocalCluster) -> Iterator[Client]:
    with shared_cluster.client(timeout_s=10.0) as client:
        shared_cluster.wait_for_workers(client, shared_cluster.workers, timeout_s=TASK_TIMEOUT_S)
        yield client


@pytest.fixture
def shared_client(_shared_connection: Client) -> Iterator[Client]:
    """A client of the module's shared cluster; after the test, no task may be left unfinished."""
    yield _shared_connection

    def settled() -> bool:
        states = _shared_connection.stats()["queue"]["states"]
        return not any(states.get(state, 0) for state in OPEN_STATES)

    wait_until(settled, TASK_TIMEOUT_S, "the shared cluster to have no unfinished task")
    assert len(_shared_connection.workers()) == 2, "a test on the shared cluster lost a worker"


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """``connect(cluster)`` -> a Client of that cluster, closed at teardown."""
    clients: list[Client] = []

    def make(cluster: LocalCluster, timeout_s: float = 10.0) -> Client:
        client: Client = cluster.client(timeout_s=timeout_s)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ready(connect: Callable[..., Client]) -> Callable[..., Client]:
    """``ready(cluster)`` -> a connected Client once every worker of the cluster registered."""

    def make(cluster: LocalCluster, timeout_s: float = 10.0) -> Client:
        client = connect(cluster, timeout_s)
        if cluster.workers:  # wait_for_workers(client, 0) never returns: an empty list is falsy
            cluster.wait_for_workers(client, cluster.workers, timeout_s=TASK_TIMEOUT_S)
        return client

    return make


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write_file(name, text)`` -> a path under the test's tmp_path holding ``text``."""

    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """A loopback endpoint nobody listens on: the port is held (bound, not listening) by the test."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    try:
        yield f"tcp://127.0.0.1:{holder.getsockname()[1]}"
    finally:
        holder.close()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """CURVE key pairs under tmp_path (server/coordinator, workers/worker, clients/c, and two not
    allow-listed: rogue/r and spare/d) and a coordinator.toml [security] that uses them."""
    for folder, name in (("server", "coordinator"), ("workers", "worker"), ("clients", "c"), ("rogue", "r"),
                         ("spare", "d")):
        security.generate(tmp_path / folder, name)
    (tmp_path / "coordinator.toml").write_text(
        f'[security]\nsecret_key_file = "{tmp_path}/server/coordinator.key_secret"\n'
        f'worker_keys_dir = "{tmp_path}/workers"\nclient_keys_dir = "{tmp_path}/clients"\n')
    return tmp_path


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
