"""The client API against a real coordinator and real workers: submit, wait, query, cancel."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from actorsched.client import Client
from actorsched.errors import TaskFailed, TaskNotFound
from actorsched.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(90)

TASK_TIMEOUT_S = 30.0  # bound on every wait for a task: generous for a noisy shared CI machine

Ready = Callable[..., Client]


def _running(client: Client, task_id: str) -> bool:
    return client.query(task_id).state == "RUNNING"


# ------------------------------------------------------------------ results


def test_a_submitted_task_returns_its_value(shared_client: Client) -> None:
    client = shared_client
    handle = client.submit("actorsched.tasks:add", 2, 3, 4)
    assert handle.result(timeout=TASK_TIMEOUT_S) == 9


def test_keyword_arguments_reach_the_task(shared_client: Client) -> None:
    client = shared_client
    handle = client.submit("actorsched.tasks:echo", 1, "two", flag=True)
    assert handle.result(timeout=TASK_TIMEOUT_S) == [[1, "two"], {"flag": True}]


def test_gather_of_500_echo_tasks_returns_their_values_in_submit_order(shared_client: Client) -> None:
    client = shared_client
    handles = client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(500)])
    assert client.gather(handles, timeout=60) == list(range(500))


def test_gather_with_return_exceptions_puts_the_failure_in_its_place(shared_client: Client) -> None:
    client = shared_client
    handles = [client.submit("actorsched.tasks:echo", "a"),
               client.submit("actorsched.tasks:fail", "nope", max_attempts=1),
               client.submit("actorsched.tasks:echo", "c")]
    first, failure, last = client.gather(handles, timeout=TASK_TIMEOUT_S, return_exceptions=True)
    assert (first, last) == ("a", "c")
    assert isinstance(failure, TaskFailed) and failure.error_message == "nope"


def test_as_completed_yields_every_handle_exactly_once(shared_client: Client) -> None:
    client = shared_client
    handles = client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(100)])
    seen = [handle.task_id for handle in client.as_completed(handles, timeout=60)]
    assert len(seen) == len(set(seen)) == 100
    assert set(seen) == {handle.task_id for handle in handles}
    assert all(handle.status() == "SUCCEEDED" for handle in handles)


def test_tasks_of_one_batch_spread_over_both_workers(shared_client: Client) -> None:
    client = shared_client
    handles = client.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.3]} for _ in range(4)])
    client.gather(handles, timeout=TASK_TIMEOUT_S)
    assert {handle.info().worker_id for handle in handles} == {"worker-1", "worker-2"}


# ------------------------------------------------------------------ query


def test_query_of_an_id_never_submitted_is_not_found_without_an_exception(shared_client: Client) -> None:
    client = shared_client
    info = client.query("never-submitted")
    assert info.state == "NOT_FOUND" and info.task_id == "never-submitted"
    assert client.handle("never-submitted").status() == "NOT_FOUND"


def test_result_of_an_id_never_submitted_raises_task_not_found(shared_client: Client) -> None:
    client = shared_client
    with pytest.raises(TaskNotFound, match="never-submitted"):
        client.handle("never-submitted").result(timeout=TASK_TIMEOUT_S)


def test_status_of_a_finished_task_is_succeeded_with_attempt_one_and_its_worker(shared_client: Client) -> None:
    client = shared_client
    handle = client.submit("actorsched.tasks:echo", "hello")
    assert handle.result(timeout=TASK_TIMEOUT_S) == "hello"
    info = client.query(handle.task_id)  # a fresh round trip, not the handle's cache
    assert info.state == "SUCCEEDED"
    assert info.attempt == 1
    assert info.worker_id in {"worker-1", "worker-2"}
    assert info.name == "actorsched.tasks:echo" and info.value == "hello" and info.error is None
    assert [(record.attempt, record.worker_id, record.outcome) for record in info.history] == [
        (1, info.worker_id, "succeeded")]
    assert handle.status() == "SUCCEEDED"


def test_submitting_the_same_task_id_twice_runs_it_once(shared_client: Client) -> None:
    client = shared_client
    tasks_before = client.stats()["queue"]["tasks"]
    first = client.submit("actorsched.tasks:pid", task_id="same-id")
    value = first.result(timeout=TASK_TIMEOUT_S)
    second = client.submit("actorsched.tasks:pid", task_id="same-id")
    assert second.result(timeout=TASK_TIMEOUT_S) == value
    assert client.query("same-id").attempt == 1
    assert client.stats()["queue"]["tasks"] == tasks_before + 1


# ------------------------------------------------------------------ cancel


def test_cancel_of_an_unknown_id_returns_false(shared_client: Client) -> None:
    client = shared_client
    assert client.cancel("no-such-task") is False
    assert client.query("no-such-task").state == "NOT_FOUND"


def test_cancel_of_a_finished_task_returns_false_and_changes_nothing(shared_client: Client) -> None:
    client = shared_client
    handle = client.submit("actorsched.tasks:echo", 42)
    assert handle.result(timeout=TASK_TIMEOUT_S) == 42
    before = client.query(handle.task_id)
    cancelled_before = client.stats()["queue"]["states"]["CANCELLED"]
    assert handle.cancel() is False
    assert client.cancel_many([handle.task_id]) == []
    assert client.query(handle.task_id) == before
    assert client.stats()["queue"]["states"]["CANCELLED"] == cancelled_before


def test_cancel_of_a_queued_task_without_workers_cancels_it(make_cluster: Callable[..., LocalCluster],
                                                            ready: Ready) -> None:
    cluster = make_cluster(workers=0)
    client = ready(cluster)
    handle = client.submit("actorsched.tasks:echo", 1)
    assert handle.status() == "QUEUED"
    assert handle.cancel() is True
    assert client.query(handle.task_id).state == "CANCELLED"
    with pytest.raises(TaskFailed) as failure:
        handle.result(timeout=TASK_TIMEOUT_S)
    assert failure.value.state == "CANCELLED"
    assert handle.cancel() is False  # a second cancel finds it final


def test_cancelling_a_queued_task_cancels_the_tasks_that_depend_on_it(make_cluster: Callable[..., LocalCluster],
                                                                      ready: Ready) -> None:
    cluster = make_cluster(workers=0)
    client = ready(cluster)
    parent = client.submit("actorsched.tasks:echo", 1)
    child = client.submit("actorsched.tasks:echo", 2, deps=[parent.task_id])
    grandchild = client.submit("actorsched.tasks:echo", 3, deps=[child.task_id])
    assert child.status() == "WAITING"
    assert sorted(client.cancel_many([parent.task_id])) == sorted(h.task_id for h in (parent, child, grandchild))
    assert [info.state for info in client.query_many([parent.task_id, child.task_id, grandchild.task_id])] == [
        "CANCELLED"] * 3


def test_a_task_cancelled_while_queued_never_runs_once_a_worker_arrives(make_cluster: Callable[..., LocalCluster],
                                                                        ready: Ready) -> None:
    cluster = make_cluster(workers=0, slots=1)
    client = ready(cluster)
    cancelled = client.submit("actorsched.tasks:echo", "cancelled")
    kept = client.submit("actorsched.tasks:echo", "kept")
    assert cancelled.cancel() is True
    cluster.add_worker()
    assert kept.result(timeout=TASK_TIMEOUT_S) == "kept"
    info = client.query(cancelled.task_id)
    assert info.state == "CANCELLED" and info.history == [] and info.worker_id == ""


def test_cancel_of_a_queued_task_behind_busy_workers_cancels_it(make_cluster: Callable[..., LocalCluster],
                                                                ready: Ready) -> None:
    cluster = make_cluster(workers=1, slots=1)
    client = ready(cluster)
    blocker = client.submit("actorsched.tasks:sleep", 60)
    wait_until(lambda: _running(client, blocker.task_id), TASK_TIMEOUT_S, "the blocker to run")
    queued = client.submit("actorsched.tasks:echo", 1)
    assert queued.status() == "QUEUED"
    assert client.cancel_many([queued.task_id]) == [queued.task_id]
    assert queued.status() == "CANCELLED"
    assert blocker.cancel() is True


def test_cancel_of_a_running_task_kills_it_and_the_worker_runs_the_next_task(
        make_cluster: Callable[..., LocalCluster], ready: Ready) -> None:
    cluster = make_cluster(workers=1, slots=1)
    client = ready(cluster)
    running = client.submit("actorsched.tasks:sleep", 60)
    wait_until(lambda: _running(client, running.task_id), TASK_TIMEOUT_S, "the sleep task to run")
    assert running.cancel() is True
    assert client.query(running.task_id).state == "CANCELLED"

    def confirmed_by_worker() -> bool:
        history = client.query(running.task_id).history
        return bool(history) and history[-1].error is not None and history[-1].error.type == "Cancelled"

    wait_until(confirmed_by_worker, TASK_TIMEOUT_S, "the worker to confirm the cancel")
    wait_until(lambda: client.workers()[0].running == 0, TASK_TIMEOUT_S, "the worker's slot to be free")
    info = client.query(running.task_id)
    assert info.state == "CANCELLED" and info.attempt == 1 and info.worker_id == "worker-1"
    (worker,) = client.workers()
    assert worker.worker_id == "worker-1" and worker.state == "ALIVE"
    assert cluster.worker_procs[0].poll() is None

    after = client.submit("actorsched.tasks:echo", "after")
    assert after.result(timeout=TASK_TIMEOUT_S) == "after"
    assert after.info().worker_id == "worker-1"
