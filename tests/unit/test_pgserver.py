"""tests/pgserver.py: real PostgreSQL servers for the journal tests start, separate, restart and crash as promised.

The shared ``pg_server`` covers the cheap checks; one more server (durable, so that a crash
keeps what was committed) is shared by the restart and kill tests of this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil
import psycopg
import pytest
from pgserver import PgServer


@pytest.fixture(scope="module")
def durable_server(pg_server: PgServer) -> Iterator[PgServer]:
    """A second server to restart and kill (``pg_server`` first, for its skip-or-fail on availability)."""
    with PgServer(durable=True, listen=["127.0.0.2"]) as server:
        yield server


def _rows(dsn: str) -> list[int]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return [row[0] for row in conn.execute("SELECT n FROM t ORDER BY n")]


def test_server_answers_select_1(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    assert pg_server.running and pg_server.pid is not None
    assert pg_server.log_path.exists()
    assert f"port={pg_server.port}" in pg_server.dsn()


def test_pg_dsn_is_a_database_of_its_own(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        name = row[0]
        assert name.startswith("t_test_pg_dsn_is_a_database_of_its_own_")
        conn.execute("CREATE TABLE t (n int)")
    other = pg_server.create_database()
    other_name = other.rsplit("dbname=", 1)[1]
    conn = psycopg.connect(other, connect_timeout=10, autocommit=True)
    try:
        assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)
        pg_server.drop_database(other_name)  # what pg_dsn does after a test: its open session is ended
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(pg_server.dsn(), connect_timeout=10) as admin:
        names = {row[0] for row in admin.execute("SELECT datname FROM pg_database")}
    assert name in names and other_name not in names


def test_server_processes_are_not_root(pg_server: PgServer) -> None:
    assert pg_server.pid is not None
    postmaster = psutil.Process(pg_server.pid)
    uids = {postmaster.uids().real}
    for child in postmaster.children():
        with contextlib.suppress(psutil.NoSuchProcess):  # the backend of a session just closed may be exiting
            uids.add(child.uids().real)
    if os.geteuid() == 0:
        assert 0 not in uids and pg_server.user is not None
    else:
        assert uids == {os.geteuid()} and pg_server.user is None


def test_extra_listen_address_accepts_connections(durable_server: PgServer) -> None:
    with psycopg.connect(durable_server.dsn(host="127.0.0.2"), connect_timeout=10) as conn:
        assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.2/32",)


def test_restart_keeps_data_and_port(durable_server: PgServer) -> None:
    dsn = durable_server.create_database("restart_keeps")
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    port, pid = durable_server.port, durable_server.pid
    durable_server.restart()
    assert durable_server.port == port and durable_server.pid not in (None, pid)
    assert _rows(dsn) == [1, 2]


def test_kill_then_restart_recovers_committed_data(durable_server: PgServer) -> None:
    dsn = durable_server.create_database("kill_recovers")
    idle = psycopg.connect(dsn, connect_timeout=10, autocommit=True)  # a backend left behind by the crash
    try:
        idle.execute("CREATE TABLE t (n int)")
        idle.execute("INSERT INTO t VALUES (7)")
        port, pid = durable_server.port, durable_server.pid
        assert pid is not None
        children = psutil.Process(pid).children(recursive=True)
        assert children
        durable_server.kill()
        assert not durable_server.running and durable_server.pid is None
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        for child in children:  # none outlives the postmaster (a zombie waiting for init is gone)
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        idle.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    durable_server.restart()
    assert durable_server.port == port
    assert _rows(dsn) == [7]
    assert "not properly shut down" in durable_server.log_path.read_text()
