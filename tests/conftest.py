"""Shared fixtures: real local clusters and PostgreSQL servers that are always torn down, even when a test fails."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pgserver import PgServer

from actorsched.localcluster import LocalCluster, wait_until

__all__ = ["wait_until"]


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., LocalCluster]]:
    """``make_cluster(workers=2, slots=2, coordinator_args=[...], worker_args=[...])`` -> a started cluster.

    Logs and the journal go under the test's tmp_path; every process is stopped at teardown.
    """
    clusters: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("log_dir", str(tmp_path / f"cluster{len(clusters)}"))
        kwargs.setdefault("state_dir", str(tmp_path / f"cluster{len(clusters)}" / "state"))
        cluster = LocalCluster(**kwargs)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    """A coordinator with two workers of two slots each, fast failure detection."""
    return make_cluster(workers=2, slots=2, coordinator_args=["--worker-timeout", "2"])


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole session (initdb costs seconds; databases are per test).

    Skips, naming the reason, where PostgreSQL cannot be had (``make postgresql`` installs it);
    but fails under CI (``CI`` set), where a silent skip would hide that the journal went untested.
    """
    reason = PgServer.available()
    if reason is not None:
        if _in_ci():
            pytest.fail(f"PostgreSQL is required when CI is set, but unavailable: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database on ``pg_server`` for this test -> its DSN; dropped after (its sessions terminated first)."""
    stem = re.sub(r"[^a-z0-9_]+", "_", request.node.name.lower())[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    dsn = pg_server.create_database(name)
    yield dsn
    if pg_server.running:  # else the database goes with the server's folder at session end
        pg_server.drop_database(name)


@pytest.fixture
def memory_spans() -> Iterator[Any]:
    """This process traces into the OpenTelemetry SDK's in-memory exporter (as the client); off again afterwards."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from actorsched import tracing

    assert not tracing.ENABLED, "tracing was left on in this process by an earlier test"
    exporter = InMemorySpanExporter()
    assert tracing.setup("client", exporters=[exporter])
    try:
        yield exporter
    finally:
        tracing.shutdown()
    assert not tracing.ENABLED
