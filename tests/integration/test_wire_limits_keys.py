"""Issue 9 #10 (reload): SIGHUP makes the coordinator read its CURVE key folders again.

A key removed from a folder is refused on every new connection, and a connected worker
holding it is told and removed; a key added is admitted.  No restart.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from actorsched.client import Client
from actorsched.errors import ConnectionFailed
from actorsched.localcluster import LocalCluster, wait_until

TIMEOUT_S = 30.0


def _admitted(cluster: LocalCluster, server_key: str, key_file: str) -> bool:
    """Whether a new client connection with ``key_file`` is answered (a refused one hears nothing)."""
    try:
        with Client(cluster.client_endpoint, timeout_s=1.0, server_key_file=server_key, key_file=key_file) as client:
            client.stats()
        return True
    except ConnectionFailed:
        return False


def test_sighup_reloads_the_key_folders(keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    server_key = str(keys / "server" / "coordinator.key")
    old_client, new_client = str(keys / "clients" / "c.key_secret"), str(keys / "spare" / "d.key_secret")
    worker_key = str(keys / "workers" / "worker.key_secret")
    cluster = make_cluster(workers=1, coordinator_args=["--config", str(keys / "coordinator.toml")],
                           worker_args=["--server-key", server_key, "--key", worker_key])
    assert cluster.coordinator is not None
    with Client(cluster.client_endpoint, server_key_file=server_key, key_file=old_client) as client:
        cluster.wait_for_workers(client, 1)
        assert client.submit("actorsched.tasks:echo", 1).result(timeout=TIMEOUT_S) == 1
    assert not _admitted(cluster, server_key, new_client)

    shutil.copy(keys / "spare" / "d.key", keys / "clients" / "d.key")  # admit d
    (keys / "clients" / "c.key").unlink()  # revoke c
    (keys / "workers" / "worker.key").unlink()  # revoke the worker's key
    os.kill(cluster.coordinator.pid, signal.SIGHUP)
    wait_until(lambda: "reloaded CURVE keys" in cluster.log_text(), TIMEOUT_S, "the coordinator to reload its keys")

    assert cluster.coordinator.poll() is None  # SIGHUP no longer ends it
    assert _admitted(cluster, server_key, new_client)
    assert not _admitted(cluster, server_key, old_client)
    assert cluster.worker_procs[0].wait(TIMEOUT_S) == 2  # told it was refused: it exits 2, naming why
    assert "key was removed" in cluster.log_text("worker-1")
    with Client(cluster.client_endpoint, server_key_file=server_key, key_file=new_client) as client:
        wait_until(lambda: not client.workers(), TIMEOUT_S, "the revoked worker to be removed")
        stats = client.stats()
        assert stats["transport"]["key_reloads"] == 1
