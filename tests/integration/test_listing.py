"""Listing tasks and watching progress against real processes: ``actorsched tasks``, ``wait``, the demo.

A listing must find finished tasks that already left the coordinator's memory (they are
read back from its journal), also after a restart.  ``wait`` and the demo draw a bar on
a terminal (a real pseudo-terminal here) and write short separate lines to a pipe.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched.client import Client
from actorsched.localcluster import ROOT, LocalCluster, wait_until

pytestmark = pytest.mark.timeout(180)

TASK_TIMEOUT_S = 30.0


def cli(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actorsched.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)


def test_tasks_lists_exactly_the_failed_ones_including_those_no_longer_in_memory_and_after_a_restart(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text("[tasks]\nfinished_in_memory = 0\n")  # every finished task leaves memory at once
    cluster = make_cluster(workers=2, slots=2, coordinator_args=["--config", str(config)])
    client = ready(cluster)
    good = client.submit_many({"task_id": f"good-{i:02d}", "name": "actorsched.tasks:echo", "args": [i]}
                              for i in range(20))
    bad = client.submit_many({"task_id": f"bad-{i:02d}", "name": "actorsched.tasks:fail", "args": [f"no {i}"],
                              "max_attempts": 1} for i in range(5))
    client.gather(good + bad, timeout=TASK_TIMEOUT_S, return_exceptions=True)
    wait_until(lambda: client.stats()["queue"]["in_memory"] == 0, TASK_TIMEOUT_S,
               "finished tasks to leave the coordinator's memory")
    expected = [f"bad-{i:02d}" for i in reversed(range(5))]  # newest first

    for _ in range(2):  # before and after a restart of the coordinator
        listed = cli("tasks", "--state", "FAILED", "--json", "--coordinator", cluster.client_endpoint)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [row["task_id"] for row in rows] == expected
        assert all(row["state"] == "FAILED" and row["error"]["type"] == "RuntimeError" for row in rows)
        assert all(row["error"]["traceback"] == "" and row["value"] is None for row in rows)  # light rows
        assert {row["worker_id"] for row in rows} <= {"worker-1", "worker-2"}

        table = cli("tasks", "--name", "echo", "--limit", "3", "--coordinator", cluster.client_endpoint)
        assert table.returncode == 0, table.stderr
        header, *lines = table.stdout.splitlines()
        assert header.split() == ["id", "state", "name", "attempt", "worker", "age"]
        assert [line.split()[:4] for line in lines] == [
            [f"good-{i}", "SUCCEEDED", "actorsched.tasks:echo", "1"] for i in (19, 18, 17)]
        assert client.list_tasks(id_prefix="good-0", limit=100)[-1].task_id == "good-00"
        client.close()
        cluster.kill_coordinator()
        cluster.start_coordinator()
        client = ready(cluster)

    running = client.submit("actorsched.tasks:sleep", 30)
    wait_until(lambda: [i.task_id for i in client.list_tasks(state="RUNNING")] == [running.task_id],
               TASK_TIMEOUT_S, "the sleeping task to be listed as RUNNING")
    assert client.cancel(running.task_id)


def _read_all(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    """Everything written to the pseudo-terminal ``fd`` until ``proc`` exits."""
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                chunk = b""
            data += chunk
            if not chunk and proc.poll() is not None:
                return data
        elif proc.poll() is not None:
            return data
    raise AssertionError(f"the command did not end within {timeout_s} s; it wrote {data[-300:]!r}")


def test_wait_draws_a_bar_on_a_terminal_and_writes_short_lines_to_a_pipe(
        shared_cluster: LocalCluster, shared_client: Client) -> None:
    handles = shared_client.submit_many({"name": "actorsched.tasks:sleep", "args": [0.05]} for _ in range(60))
    ids = [h.task_id for h in handles]
    endpoint = ["--coordinator", shared_cluster.client_endpoint]

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "actorsched.cli", "wait", *ids[:30], *endpoint],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        follower = -1
        terminal = _read_all(leader, proc, 60).decode()
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.wait(10) == 0
    assert "\r[" in terminal and "\x1b[K" in terminal  # redrawn in place
    last = terminal.rstrip("\r\n").rsplit("\r", 1)[-1]
    assert "100% 30/30 done, 0 failed" in last and "tasks/s" in last

    piped = cli("wait", *ids[30:], ids[0], "never-submitted-id", *endpoint)
    assert piped.returncode == 1  # one id is unknown
    assert "\r" not in piped.stderr and "\x1b" not in piped.stderr
    lines = piped.stderr.splitlines()
    assert lines[0].startswith("32/32 done, 0 failed, 1 not found") and len(lines[0]) < 120
    assert "1 id(s) not known to the coordinator" in lines[1] and "'never-submitted-id'" in lines[1]
    assert "never-submitted-id NOT_FOUND" in piped.stdout


def test_the_demo_piped_to_a_file_writes_separate_short_progress_lines(tmp_path: object) -> None:
    demo = subprocess.run([sys.executable, "-m", "actorsched.demo", "--tasks", "400", "--workers", "2",
                           "--slots", "1"], cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert "\r" not in out and "\x1b" not in out
    assert max(len(line) for line in out.splitlines()) < 200
    progress = [line for line in out.splitlines() if " done, " in line]
    assert progress and progress[-1].startswith("400/400 done, 0 failed")
    assert any(line.startswith("killed worker-1 (pid ") for line in out.splitlines())
    assert "every task succeeded" in out
