"""Task lifecycle end to end: result references, dependencies, retries, breaker, purge, admission."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import actorsched
from actorsched.client import Client
from actorsched.errors import QueueFull, TaskFailed
from actorsched.localcluster import LocalCluster, wait_until


def test_a_map_reduce_of_a_thousand_tasks_hands_every_map_result_to_the_reducer(shared_client: Client) -> None:
    maps = shared_client.submit_many({"name": "actorsched.tasks:echo", "args": [i]} for i in range(1000))
    total = shared_client.submit("actorsched.tasks:add", *[actorsched.ref(m) for m in maps])
    assert total.result(timeout=120) == sum(range(1000))
    nested = shared_client.submit("actorsched.tasks:echo", {"first": actorsched.ref(maps[0]), "more": [
        actorsched.ref(maps[1]), {"x": actorsched.ref(maps[2])}]})
    assert nested.result(timeout=30) == {"first": 0, "more": [1, {"x": 2}]}


def test_a_reference_to_a_failing_task_fails_its_dependents_with_the_cause(shared_client: Client) -> None:
    bad = shared_client.submit("actorsched.tasks:fail", "no", max_attempts=1)
    child = shared_client.submit("actorsched.tasks:echo", actorsched.ref(bad))
    grandchild = shared_client.submit("actorsched.tasks:echo", 1, deps=[child.task_id])
    for handle in (child, grandchild):
        with pytest.raises(TaskFailed) as caught:
            handle.result(timeout=30)
        assert caught.value.error_type == "DependencyFailed" and "failed" in caught.value.error_message
    assert bad.task_id in child.info().error.message  # type: ignore[union-attr]


def test_a_task_that_fails_twice_then_succeeds_shows_each_attempt(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:flaky", 2, "done", max_attempts=4)
    assert handle.result(timeout=60) == "done"
    info = handle.info()
    assert info.attempt == 3
    assert [h.outcome for h in info.history] == ["failed", "failed", "succeeded"]
    assert all(h.error and h.error.type == "RuntimeError" for h in info.history[:2])


def test_retry_on_retries_only_the_named_exception_types(shared_client: Client) -> None:
    handle = shared_client.submit("actorsched.tasks:flaky", 1, "ok", max_attempts=3, retry_on=["ValueError"])
    with pytest.raises(TaskFailed):
        handle.result(timeout=30)
    assert handle.info().attempt == 1  # RuntimeError is not in retry_on: failed at once
    retried = shared_client.submit("actorsched.tasks:flaky", 1, "ok", max_attempts=3, retry_on=["RuntimeError"])
    assert retried.result(timeout=30) == "ok" and retried.info().attempt == 2


def test_purge_forgets_finished_tasks_and_keeps_unfinished_ones(shared_client: Client) -> None:
    done = shared_client.submit("actorsched.tasks:echo", 1)
    done.result(timeout=30)
    assert shared_client.purge(older_than_s=3600) == 0 or shared_client.query(done.task_id).state == "SUCCEEDED"
    running = shared_client.submit("actorsched.tasks:sleep", 0.5)
    assert shared_client.purge() >= 1
    assert shared_client.query(done.task_id).state == "NOT_FOUND"
    assert running.result(timeout=30) == 0.5


def test_a_full_queue_rejects_a_submit_with_queue_full_and_keeps_what_it_accepted(
        tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    config = tmp_path / "small.toml"
    config.write_text("[tasks]\nmax_pending_tasks = 5\n")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config)])
    with cluster.client() as client:
        kept = client.submit_many({"name": "actorsched.tasks:echo", "args": [i]} for i in range(5))
        with pytest.raises(QueueFull, match="max_pending_tasks"):
            client.submit("actorsched.tasks:echo", 99)
        assert {client.query(h.task_id).state for h in kept} == {"QUEUED"}
        cluster.add_worker()
        assert client.gather(kept, timeout=60) == [0, 1, 2, 3, 4]


def test_a_worker_whose_attempts_fail_while_they_succeed_elsewhere_is_cut_off_by_its_breaker(
        tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    config = tmp_path / "breaker.toml"
    config.write_text("[breaker]\nmin_attempts = 4\nopen_s = 600.0\n"
                      "[tasks]\nretry_backoff_base_s = 0.05\nretry_backoff_cap_s = 0.1\n")
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config)])
    cluster.add_worker(slots=2, env={"ACTORSCHED_TEST_BROKEN": "1"})  # worker-1: every task fails there
    with cluster.client() as client:
        cluster.wait_for_workers(client, 1)
        first = client.submit_many({"name": "actorsched.tasks:fail_if_env", "args": ["ACTORSCHED_TEST_BROKEN", i],
                                    "max_attempts": 200} for i in range(8))
        # Each task fails at least once on worker-1 (then the only worker) before the healthy one comes.
        wait_until(lambda: all(h.info().attempt >= 2 for h in first), 60, "every task to fail once on worker-1")
        cluster.add_worker(slots=2)  # worker-2: healthy
        assert client.gather(first, timeout=120) == list(range(8))
        assert {h.info().worker_id for h in first} == {"worker-2"}
        wait_until(lambda: {w.worker_id: w.breaker for w in client.workers()}.get("worker-1") == "open", 30,
                   "worker-1's breaker to open")
        assert {w.worker_id: w.breaker for w in client.workers()}["worker-2"] == "closed"
        later = client.submit_many({"name": "actorsched.tasks:fail_if_env", "args": ["ACTORSCHED_TEST_BROKEN", i]}
                                   for i in range(20))
        assert client.gather(later, timeout=60) == list(range(20))
        assert {h.info().worker_id for h in later} == {"worker-2"}
        assert all(h.info().attempt == 1 for h in later)  # none of them was sent to the broken worker


def test_tasks_failing_everywhere_do_not_open_any_breaker(shared_client: Client) -> None:
    bad = shared_client.submit_many({"name": "actorsched.tasks:fail", "max_attempts": 2} for _ in range(12))
    for handle in bad:
        with pytest.raises(TaskFailed):
            handle.result(timeout=60)
    assert {w.breaker for w in shared_client.workers()} == {"closed"}
