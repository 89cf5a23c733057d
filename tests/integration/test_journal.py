"""The journal at start: created when missing, refused when newer, replayed with results intact."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from actorsched.localcluster import BIN, ROOT, LocalCluster


def start(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BIN / "coordinator"), "--bind", "tcp://127.0.0.1:0", "--worker-bind",
         "tcp://127.0.0.1:0", "--http", "", "--state-dir", str(state_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_journal_of_a_newer_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.execute("CREATE TABLE tasks (task_id TEXT)")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    result = start(tmp_path)
    assert result.returncode == 2
    assert "schema version 99" in result.stderr and "newer" in result.stderr and "journal.sqlite3" in result.stderr


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    result = start(tmp_path)
    assert result.returncode == 2 and "no actorsched tables" in result.stderr


def test_a_missing_journal_is_created_and_each_start_increments_the_epoch(
        tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=1, state_dir=str(tmp_path / "new" / "state"))
    with cluster.client() as client:
        cluster.wait_for_workers(client, 1)
        handle = client.submit("actorsched.tasks:echo", {"kept": [1, 2]})
        assert handle.result(timeout=30) == {"kept": [1, 2]}
        assert client.stats()["queue"]["epoch"] == 1
    assert (tmp_path / "new" / "state" / "journal.sqlite3").exists()
    cluster.kill_coordinator()
    cluster.start_coordinator()
    with cluster.client() as client:
        assert client.stats()["queue"]["epoch"] == 2
        info = client.query(handle.task_id)
        assert (info.state, info.value, info.worker_id) == ("SUCCEEDED", {"kept": [1, 2]}, "worker-1")
