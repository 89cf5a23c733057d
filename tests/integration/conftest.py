"""Fixtures of the integration tests: clients that are always closed, config files, a dead port.

The clusters themselves come from ``make_cluster`` / ``cluster`` in ``tests/conftest.py``,
which stop every process they started, even when a test fails.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actorsched.client import Client
from actorsched.localcluster import LocalCluster

TASK_TIMEOUT_S = 30.0
"""Bound on waits for workers to register: generous for a noisy shared CI machine."""


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

