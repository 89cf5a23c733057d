"""Issue 10 #3: the coordinator's log names the task, attempt and worker of every failure, retry,
timeout and cancellation (and, at DEBUG, every start and finish); ``[logging] format = "json"``
writes each line as a JSON object whose fields a log pipeline can filter on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until

WAIT_S = 30.0


def test_failures_retries_timeouts_and_cancels_are_logged_with_task_attempt_and_worker(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('[logging]\nlevel = "DEBUG"\nformat = "json"\n'
                      "[tasks]\nretry_backoff_base_s = 0.01\nretry_backoff_cap_s = 0.02\n")
    cluster = make_cluster(workers=1, slots=2, coordinator_args=["--config", str(config)])
    client = ready(cluster)
    failing = client.submit("actorsched.tasks:fail", "boom", max_attempts=2, task_id="failing")
    slow = client.submit("actorsched.tasks:sleep", 5.0, timeout_s=0.2, max_attempts=1, task_id="slow")
    fine = client.submit("actorsched.tasks:echo", 1, task_id="fine")
    client.gather([failing, slow, fine], timeout=WAIT_S, return_exceptions=True)
    parked = client.submit("actorsched.tasks:echo", 2, task_id="parked", tags=["nobody-has-this"])
    assert client.cancel(parked.task_id)

    def lines() -> list[dict[str, str]]:
        found = []
        for line in cluster.log_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))  # every line is one JSON object
        return found

    def about(task: str, message: str) -> list[dict[str, str]]:
        return [entry for entry in lines() if entry.get("task") == task and entry["message"].startswith(message)]

    wait_until(lambda: about("parked", "task cancelled"), WAIT_S, "the cancel to be logged")
    (retry,) = about("failing", "task retry")
    assert (retry["attempt"], retry["worker"], retry["error"], retry["level"]) == ("1", "worker-1", "RuntimeError",
                                                                                   "INFO")
    (failed,) = about("failing", "task failed")
    assert (failed["attempt"], failed["level"]) == ("2", "WARNING") and "boom" in failed["message"]
    (timed_out,) = about("slow", "task failed")
    assert timed_out["error"] == "TimedOut" and timed_out["worker"] == "worker-1"
    assert about("slow", "task started")  # (a task done within the worker's start report may not say it started)
    assert about("fine", "task succeeded")
    assert all({"ts", "level", "logger", "pid", "message"} <= entry.keys() for entry in lines())
