"""Where and in what order tasks run: priorities, least-loaded placement, slot limits."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from actorsched.client import Client, TaskHandle
from actorsched.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.timeout(90)

TASK_TIMEOUT_S = 30.0  # bound on every wait for a task: generous for a noisy shared CI machine
WriteFile = Callable[[str, str], Path]

# Load score from running tasks only: CPU and memory are host-wide on one machine, so
# their sampling noise would otherwise decide ties the tests want to be exact.
RUNNING_ONLY_PLACEMENT = "[placement]\ncpu_weight = 0.0\nmemory_weight = 0.0\n"
# time:monotonic_ns tells in what order tasks ran: children of one host share the clock.
CLOCK_ALLOWED = '[execution]\nallowed_modules = ["actorsched.tasks", "time"]\n'


def _wait_running(client: Client, handles: list[TaskHandle]) -> None:
    ids = [handle.task_id for handle in handles]
    wait_until(lambda: all(info.state == "RUNNING" for info in client.query_many(ids)), TASK_TIMEOUT_S,
               f"{len(ids)} task(s) to run")


def _wait_running_counts(client: Client, expected: dict[str, int]) -> None:
    def matches() -> bool:
        return {worker.worker_id: worker.running for worker in client.workers()} == expected

    wait_until(matches, TASK_TIMEOUT_S, f"workers to report running counts {expected}")


# ------------------------------------------------------------------ priorities


def test_a_saturated_worker_runs_smaller_priorities_first_and_fifo_within_a_priority(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], write_file: WriteFile) -> None:
    config = write_file("worker.toml", CLOCK_ALLOWED)
    cluster = make_cluster(workers=1, slots=1, worker_args=["--config", str(config)])
    client = ready(cluster)
    blocker = client.submit("actorsched.tasks:sleep", 60, priority=-1000)
    _wait_running(client, [blocker])

    priorities = [3, -2, 0, 7, 0, -2, 3, 1, 0, 7, -5, 1]
    random.Random(1234).shuffle(priorities)
    handles = [client.submit("time:monotonic_ns", priority=priority, task_id=f"n{order:02d}-p{priority}")
               for order, priority in enumerate(priorities)]
    assert {handle.status() for handle in handles} == {"QUEUED"}, "the worker's only slot is busy"

    assert blocker.cancel() is True  # frees the slot: the queue now drains one task at a time
    started_ns = client.gather(handles, timeout=TASK_TIMEOUT_S)

    ran = [handle.task_id for _, handle in sorted(zip(started_ns, handles, strict=True), key=lambda pair: pair[0])]
    expected = [handle.task_id for _, _, handle in sorted(
        (priority, order, handle) for order, (priority, handle) in enumerate(zip(priorities, handles, strict=True)))]
    assert ran == expected
    assert {handle.info().worker_id for handle in handles} == {"worker-1"}


def test_a_later_task_with_a_smaller_priority_overtakes_queued_ones(make_cluster: Callable[..., LocalCluster],
                                                                    ready: Callable[..., Client],
                                                                    write_file: WriteFile) -> None:
    config = write_file("worker.toml", CLOCK_ALLOWED)
    cluster = make_cluster(workers=1, slots=1, worker_args=["--config", str(config)])
    client = ready(cluster)
    blocker = client.submit("actorsched.tasks:sleep", 60)
    _wait_running(client, [blocker])
    early = client.submit_many([{"name": "time:monotonic_ns", "priority": 5} for _ in range(3)])
    urgent = client.submit("time:monotonic_ns", priority=-5)
    assert blocker.cancel() is True
    early_ns = client.gather(early, timeout=TASK_TIMEOUT_S)
    urgent_ns = urgent.result(timeout=TASK_TIMEOUT_S)
    assert urgent_ns < min(early_ns)
    assert early_ns == sorted(early_ns)


# ------------------------------------------------------------------ placement


def test_each_new_task_goes_to_the_least_loaded_worker(make_cluster: Callable[..., LocalCluster],
                                                       ready: Callable[..., Client], write_file: WriteFile) -> None:
    config = write_file("coordinator.toml", RUNNING_ONLY_PLACEMENT)
    cluster = make_cluster(workers=2, slots=2, coordinator_args=["--config", str(config), "--worker-timeout", "2"])
    client = ready(cluster)
    handles: list[TaskHandle] = []
    for expected in ([0, 1], [1, 1], [1, 2], [2, 2]):  # one at a time: each sees the previous one's load
        handles.append(client.submit("actorsched.tasks:sleep", 60))
        _wait_running(client, handles)
        per_worker = Counter(handle.info().worker_id for handle in handles)
        assert sorted([per_worker["worker-1"], per_worker["worker-2"]]) == expected, per_worker
    _wait_running_counts(client, {"worker-1": 2, "worker-2": 2})
    assert sorted(client.cancel_many([handle.task_id for handle in handles])) == sorted(h.task_id for h in handles)
    _wait_running_counts(client, {"worker-1": 0, "worker-2": 0})


def test_tasks_fill_workers_by_relative_load_and_never_beyond_their_slots(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client], write_file: WriteFile) -> None:
    config = write_file("coordinator.toml", RUNNING_ONLY_PLACEMENT)
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(config), "--worker-timeout", "2"])
    client = connect(cluster)
    cluster.add_worker(slots=4)  # worker-1
    cluster.add_worker(slots=1)  # worker-2
    cluster.wait_for_workers(client, 2, timeout_s=TASK_TIMEOUT_S)

    handles = []
    for _ in range(5):  # one at a time, so each placement sees the load left by the previous one
        handles.append(client.submit("actorsched.tasks:sleep", 60))
        _wait_running(client, handles)
    extra = client.submit("actorsched.tasks:sleep", 60)
    _wait_running_counts(client, {"worker-1": 4, "worker-2": 1})
    assert Counter(handle.info().worker_id for handle in handles) == {"worker-1": 4, "worker-2": 1}
    assert extra.status() == "QUEUED", "every slot is taken, so the sixth task must wait"

    assert handles[0].cancel() is True  # one slot frees up: the waiting task takes it
    _wait_running(client, [extra])
    assert extra.info().worker_id == handles[0].info().worker_id
    client.cancel_many([handle.task_id for handle in [*handles, extra]])


def test_a_burst_of_tasks_never_runs_more_tasks_on_a_worker_than_its_slots(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--worker-timeout", "2"])
    client = connect(cluster)
    cluster.add_worker(slots=2)  # worker-1
    cluster.add_worker(slots=1)  # worker-2
    cluster.wait_for_workers(client, 2, timeout_s=TASK_TIMEOUT_S)
    slots = {worker.worker_id: worker.slots for worker in client.workers()}
    assert slots == {"worker-1": 2, "worker-2": 1}

    handles = client.submit_many([{"name": "actorsched.tasks:sleep", "args": [0.3]} for _ in range(12)])
    samples: list[dict[str, int]] = []

    def all_done() -> bool:
        samples.append({worker.worker_id: worker.running for worker in client.workers()})
        stats = client.stats()["queue"]["states"]
        return stats["SUCCEEDED"] == len(handles)

    wait_until(all_done, TASK_TIMEOUT_S, "the burst to finish")
    over = [sample for sample in samples if any(sample[w] > slots[w] for w in sample)]
    assert not over, f"workers ran more tasks than slots: {over[:5]}"
    assert any(sum(sample.values()) == 3 for sample in samples), f"never saturated: {samples}"
    per_worker = Counter(handle.info().worker_id for handle in handles)
    assert set(per_worker) == {"worker-1", "worker-2"}
    assert all(handle.info().attempt == 1 for handle in handles)


def test_aging_lets_a_low_priority_task_run_within_its_bound_under_a_steady_stream_of_urgent_work(
        tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    config = tmp_path / "aging.toml"
    config.write_text("[placement]\naging_s_per_priority = 0.2\ncpu_weight = 0.0\nmemory_weight = 0.0\n")
    cluster = make_cluster(workers=1, slots=1, coordinator_args=["--config", str(config)])
    with cluster.client() as client:
        cluster.wait_for_workers(client, 1)
        urgent = [client.submit("actorsched.tasks:sleep", 0.05, priority=0) for _ in range(10)]
        low = client.submit("actorsched.tasks:echo", "low", priority=5)
        submitted_at = time.time()
        # A steady stream: each time an urgent task finishes, another one is queued, so
        # about ten urgent tasks always wait, for well past the bound.
        waited = 0
        while time.time() - submitted_at < 4.0:
            urgent[waited].result(timeout=30)
            waited += 1
            urgent.append(client.submit("actorsched.tasks:sleep", 0.05, priority=0))
        assert low.done(), "with aging the low-priority task must not wait for the stream to end"
        started = low.info().history[-1].started_at
        # Bound: (5 - 0) levels x 0.2 s = 1 s of waiting, plus the task running when it came
        # due and scheduling slack on a busy machine.  Strict priority would starve it.
        assert started - submitted_at < 2.5
        client.cancel_many([h.task_id for h in urgent[waited:]])
