"""Things going wrong with real processes: failing tasks, bad submits, restarts, stopped and killed workers."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

from actorsched.client import Client, InvalidTask
from actorsched.errors import SubmitRejected, TaskFailed
from actorsched.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(90)

TASK_TIMEOUT_S = 30.0  # bound on every wait for a task: generous for a noisy shared CI machine
Ready = Callable[..., Client]


def _worker_proc(cluster: LocalCluster, worker_id: str) -> subprocess.Popen[bytes]:
    """The process of ``worker-N`` (LocalCluster numbers workers from 1 in start order)."""
    return cluster.worker_procs[int(worker_id.removeprefix("worker-")) - 1]


def _worker_states(client: Client) -> dict[str, str]:
    return {worker.worker_id: worker.state for worker in client.workers()}


# ------------------------------------------------------------------ failing tasks


def test_a_task_raising_an_exception_fails_with_its_type_message_and_traceback(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:fail", "broken on purpose", max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    failure = raised.value
    assert failure.task_id == handle.task_id and failure.state == "FAILED"
    assert failure.error_type == "RuntimeError" and failure.error_message == "broken on purpose"
    assert "tasks.py" in failure.remote_traceback and "RuntimeError: broken on purpose" in failure.remote_traceback

    info = shared_client.query(handle.task_id)
    assert info.state == "FAILED" and info.attempt == 1 and info.value is None
    assert info.error is not None
    assert (info.error.type, info.error.message) == ("RuntimeError", "broken on purpose")
    assert "tasks.py" in info.error.traceback
    assert [record.outcome for record in info.history] == ["failed"]


def test_a_failing_task_with_three_attempts_shows_three_failed_attempts_in_its_history(
        shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:fail", "again", max_attempts=3)
    with pytest.raises(TaskFailed, match="RuntimeError: again"):
        handle.result(timeout=TASK_TIMEOUT_S)
    info = shared_client.query(handle.task_id)
    assert info.state == "FAILED" and info.attempt == 3
    assert [record.attempt for record in info.history] == [1, 2, 3]
    assert all(record.outcome == "failed" for record in info.history)
    assert all(record.error is not None and record.error.type == "RuntimeError" for record in info.history)
    assert all(record.worker_id in {"worker-1", "worker-2"} for record in info.history)


@pytest.mark.parametrize("name", ["os:getcwd", "json:dumps", "subprocess:run"])
def test_a_task_outside_the_allowlist_fails_cleanly_and_the_worker_keeps_working(shared_client: Client,
                                                                                  name: str) -> None:
    handle = shared_client.submit(name, max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert raised.value.error_type == "TaskNotAllowed"
    module = name.partition(":")[0]
    assert repr(module) in raised.value.error_message and "allowed_modules" in raised.value.error_message
    refused_on = shared_client.query(handle.task_id).worker_id
    assert refused_on in {"worker-1", "worker-2"}

    # Four tasks on four slots: every worker runs one, the one that refused included.
    after = shared_client.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.3]} for _ in range(4)])
    assert shared_client.gather(after, timeout=TASK_TIMEOUT_S) == [0.3] * 4
    assert refused_on in {handle.info().worker_id for handle in after}
    assert _worker_states(shared_client) == {"worker-1": "ALIVE", "worker-2": "ALIVE"}


def test_an_unknown_function_of_an_allowed_module_fails_with_a_clear_error(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:no_such_function", max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert raised.value.state == "FAILED"
    assert "no_such_function" in raised.value.error_message
    assert "actorsched.tasks" in raised.value.error_message
    assert shared_client.submit("actorsched.tasks:echo", "fine").result(timeout=TASK_TIMEOUT_S) == "fine"


def test_an_unknown_module_fails_with_a_clear_error(make_cluster: Callable[..., LocalCluster],
                                                    ready: Ready, write_file: Callable[..., Any]) -> None:
    config = write_file("worker.toml", '[execution]\nallowed_modules = ["actorsched.*"]\n')
    cluster = make_cluster(workers=1, worker_args=["--config", str(config)])
    client = ready(cluster)
    handle = client.submit("actorsched.no_such_module:run", max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert "actorsched.no_such_module" in raised.value.error_message
    assert client.submit("actorsched.tasks:echo", 7).result(timeout=TASK_TIMEOUT_S) == 7


def test_a_task_past_its_timeout_is_killed_and_fails_timed_out(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:sleep", 30, timeout_s=0.3, max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert raised.value.error_type == "TimedOut" and "0.3" in raised.value.error_message
    assert shared_client.submit("actorsched.tasks:echo", "next").result(timeout=TASK_TIMEOUT_S) == "next"


def test_a_task_whose_child_process_dies_fails_and_its_worker_survives(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:crash", 3, max_attempts=1)
    with pytest.raises(TaskFailed) as raised:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert raised.value.state == "FAILED" and "3" in raised.value.error_message
    assert _worker_states(shared_client) == {"worker-1": "ALIVE", "worker-2": "ALIVE"}
    after = shared_client.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.3]} for _ in range(4)])
    assert shared_client.gather(after, timeout=TASK_TIMEOUT_S) == [0.3] * 4


def test_a_task_depending_on_a_failed_task_fails_naming_the_dependency(shared_client: Client) -> None:
    parent = shared_client.submit("actorsched.tasks:fail", max_attempts=1)
    child = shared_client.submit("actorsched.tasks:echo", 1, deps=[parent.task_id])
    with pytest.raises(TaskFailed) as raised:
        child.result(timeout=TASK_TIMEOUT_S)
    assert raised.value.state == "FAILED" and parent.task_id in raised.value.error_message
    assert shared_client.query(child.task_id).history == []  # it never ran


# ------------------------------------------------------------------ bad submits


@pytest.mark.parametrize(("spec", "fragment"), [
    ({"name": ""}, "package.module:function"),
    ({"name": "not a task name"}, "package.module:function"),
    ({"name": "actorsched.tasks:echo", "priority": 10**9}, "priority"),
    ({"name": "actorsched.tasks:echo", "args": [object()]}, "args"),
    ({"name": "actorsched.tasks:echo", "kwargs": {"value": object()}}, "kwargs"),
    ({"name": "actorsched.tasks:echo", "task_id": ""}, "task id"),
    ({"name": "actorsched.tasks:echo", "max_attempts": 0}, "max_attempts"),
])
def test_a_bad_submit_is_refused_by_the_client_before_anything_is_sent(shared_client: Client,
                                                                       spec: dict[str, Any], fragment: str) -> None:
    before = shared_client.stats()["queue"]
    good = {"name": "actorsched.tasks:echo", "args": [1]}
    with pytest.raises(InvalidTask, match=fragment) as raised:
        shared_client.submit_many([good, spec, good])  # the good ones must not be sent either
    assert isinstance(raised.value, SubmitRejected) and isinstance(raised.value, ValueError)
    after = shared_client.stats()["queue"]
    assert (after["submitted"], after["tasks"], after["rejected_batches"]) == (
        before["submitted"], before["tasks"], before["rejected_batches"])


def test_a_bad_submit_through_submit_raises_before_sending(shared_client: Client) -> None:
    submitted = shared_client.stats()["queue"]["submitted"]
    with pytest.raises(InvalidTask, match="priority"):
        shared_client.submit("actorsched.tasks:echo", 1, priority=10**9)
    with pytest.raises(InvalidTask, match="args"):
        shared_client.submit("actorsched.tasks:echo", object())
    with pytest.raises(InvalidTask):
        shared_client.submit("")
    assert shared_client.stats()["queue"]["submitted"] == submitted


# ------------------------------------------------------------------ coordinator restart


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_the_worker_reconnects_after_the_coordinator_restarts(make_cluster: Callable[..., LocalCluster],
                                                              ready: Ready, sig: int) -> None:
    cluster = make_cluster(workers=1, coordinator_args=["--worker-timeout", "2"])
    client = ready(cluster)
    before = client.submit("actorsched.tasks:echo", "before")
    assert before.result(timeout=TASK_TIMEOUT_S) == "before"
    endpoints = (cluster.client_endpoint, cluster.worker_endpoint)
    old_epoch = client.stats()["queue"]["epoch"]

    cluster.kill_coordinator(sig)
    assert cluster.coordinator is not None
    assert cluster.coordinator.returncode == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    cluster.start_coordinator()
    assert (cluster.client_endpoint, cluster.worker_endpoint) == endpoints

    wait_until(lambda: [w.worker_id for w in client.workers()] == ["worker-1"], TASK_TIMEOUT_S,
               "the worker to register with the restarted coordinator")
    assert client.stats()["queue"]["epoch"] > old_epoch
    after = client.submit("actorsched.tasks:echo", "after")
    assert after.result(timeout=TASK_TIMEOUT_S) == "after"
    assert after.info().worker_id == "worker-1"
    info = client.query(before.task_id)  # from the journal
    assert (info.state, info.value, info.attempt) == ("SUCCEEDED", "before", 1)
    assert cluster.worker_procs[0].poll() is None


def test_a_result_awaited_across_a_coordinator_restart_arrives_and_the_task_is_not_rerun(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client]) -> None:
    cluster = make_cluster(workers=1, slots=1, coordinator_args=["--worker-timeout", "2"])
    client = connect(cluster, timeout_s=3.0)  # idle this long, the client probes and renews its watch
    cluster.wait_for_workers(client, 1, timeout_s=TASK_TIMEOUT_S)
    handle = client.submit("actorsched.tasks:sleep", 1.0)
    wait_until(lambda: handle.status() == "RUNNING", TASK_TIMEOUT_S, "the sleep task to run")
    outcome: dict[str, Any] = {}

    def wait_for_result() -> None:
        try:
            outcome["value"] = handle.result(timeout=TASK_TIMEOUT_S)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_result, name="result-waiter", daemon=True)
    waiter.start()
    cluster.kill_coordinator(signal.SIGKILL)
    cluster.start_coordinator()
    waiter.join(TASK_TIMEOUT_S + 10)
    assert not waiter.is_alive(), "result() did not return"
    assert outcome == {"value": 1.0}
    info = client.query(handle.task_id)
    assert (info.state, info.attempt, info.worker_id) == ("SUCCEEDED", 1, "worker-1"), "adopted, not re-run"


def test_queued_tasks_survive_a_coordinator_kill_and_run_after_the_restart(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client],
        write_file: Callable[..., Any]) -> None:
    # The journal cannot tell "queued" from "maybe running somewhere", so after a restart
    # these tasks wait restart_grace_s for a worker to claim them: keep it short here.
    config = write_file("coordinator.toml", "[tasks]\nrestart_grace_s = 0.5\n")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config), "--worker-timeout", "2"])
    client = connect(cluster)
    handles = client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(3)])
    assert {handle.status() for handle in handles} == {"QUEUED"}

    cluster.kill_coordinator(signal.SIGKILL)
    cluster.start_coordinator()
    states = {info.state for info in client.query_many([h.task_id for h in handles])}
    assert states <= {"QUEUED", "RETRYING"}, "acknowledged tasks are neither lost nor finished by a restart"
    cluster.add_worker()
    assert client.gather(handles, timeout=TASK_TIMEOUT_S) == [0, 1, 2]
    for handle in handles:
        assert [record.outcome for record in handle.info().history] == ["succeeded"], "ran exactly once"


# ------------------------------------------------------------------ stopped and killed workers


def test_sigterm_drains_a_worker_its_running_task_finishes_and_it_exits_zero(
        make_cluster: Callable[..., LocalCluster], ready: Ready) -> None:
    cluster = make_cluster(workers=2, slots=1, coordinator_args=["--worker-timeout", "2"])
    client = ready(cluster)
    running = client.submit("actorsched.tasks:sleep", 2.0)
    wait_until(lambda: running.status() == "RUNNING", TASK_TIMEOUT_S, "the sleep task to run")
    draining_id = client.query(running.task_id).worker_id
    other_id = ({"worker-1", "worker-2"} - {draining_id}).pop()
    proc = _worker_proc(cluster, draining_id)

    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _worker_states(client).get(draining_id, "GONE") != "ALIVE", TASK_TIMEOUT_S,
               "the coordinator to see the worker draining")
    newcomer = client.submit("actorsched.tasks:echo", "elsewhere")
    assert newcomer.result(timeout=TASK_TIMEOUT_S) == "elsewhere"
    assert newcomer.info().worker_id == other_id, "a draining worker takes no new task"

    assert running.result(timeout=TASK_TIMEOUT_S) == 2.0
    info = client.query(running.task_id)
    assert (info.state, info.attempt, info.worker_id) == ("SUCCEEDED", 1, draining_id)
    assert proc.wait(timeout=TASK_TIMEOUT_S) == 0
    wait_until(lambda: draining_id not in _worker_states(client), TASK_TIMEOUT_S,
               "the drained worker to leave the worker list")
    assert _worker_states(client) == {other_id: "ALIVE"}


def test_a_worker_killed_while_idle_disappears_at_once_and_the_other_worker_takes_tasks(
        make_cluster: Callable[..., LocalCluster], ready: Ready) -> None:
    # A long heartbeat timeout: only the closed connection can explain a quick removal.
    cluster = make_cluster(workers=2, slots=1, coordinator_args=["--worker-timeout", "60"])
    client = ready(cluster)
    removed = client.stats()["workers"]["removed"]
    victim = cluster.worker_procs[0]
    victim.kill()
    assert victim.wait(timeout=TASK_TIMEOUT_S) == -signal.SIGKILL

    wait_until(lambda: list(_worker_states(client)) == ["worker-2"], 10.0,
               "the killed worker to leave the worker list (well before the 60 s heartbeat timeout)")
    assert client.stats()["workers"]["removed"] == removed + 1
    handles = client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(5)])
    assert client.gather(handles, timeout=TASK_TIMEOUT_S) == list(range(5))
    assert {handle.info().worker_id for handle in handles} == {"worker-2"}
