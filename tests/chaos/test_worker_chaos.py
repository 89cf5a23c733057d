"""Chaos against workers: kill -9 and SIGSTOP of real ``bin/worker`` processes, tasks that kill their worker.

Every test runs a real coordinator and real workers (``make_cluster``), drives them with a
seeded workload and checks the guarantees of docs/architecture.md ("Guarantees") from the coordinator's
own records: every acknowledged task ends SUCCEEDED, at most one result is committed per
task, a lost worker's tasks run again elsewhere, a task that kills workers is quarantined.

Nothing here sleeps to synchronise: every wait polls a predicate against a deadline.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from actorsched.client import Client
from actorsched.localcluster import LocalCluster, wait_until
from actorsched.protocol import TaskInfo, WorkerInfo

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SLEEP = "actorsched.tasks:sleep"


# --------------------------------------------------------------------------- helpers


def sleep_specs(prefix: str, count: int, rng: random.Random, low_s: float, high_s: float) -> list[dict[str, Any]]:
    """``count`` sleep tasks with seeded durations; each task's value is its duration."""
    return [{"task_id": f"{prefix}-{i:04d}", "name": SLEEP, "args": [round(rng.uniform(low_s, high_s), 4)]}
            for i in range(count)]


def worker_by_id(client: Client, worker_id: str) -> WorkerInfo | None:
    return next((w for w in client.workers() if w.worker_id == worker_id), None)


def proc_of(cluster: LocalCluster, info: WorkerInfo) -> subprocess.Popen[bytes]:
    """The Popen of the worker the coordinator knows as ``info`` (matched by pid)."""
    return next(p for p in cluster.worker_procs if p.pid == info.pid)


def freeze_while_holding(client: Client, cluster: LocalCluster, victim: WorkerInfo) -> None:
    """SIGSTOP ``victim`` and wait until the coordinator shows every slot of it taken.

    A stopped worker cannot report results, and with work still queued the coordinator
    fills its free slots, so ``running == slots`` is a stable state: the SIGKILL that
    follows is certain to hit a worker holding tasks, not one between two of them.
    """
    os.kill(victim.pid, signal.SIGSTOP)

    def full() -> bool:
        info = worker_by_id(client, victim.worker_id)
        return info is not None and info.running == info.slots

    wait_until(full, 30, f"the coordinator to show {victim.worker_id} holding {victim.slots} task(s)")


def kill_hard(cluster: LocalCluster, victim: WorkerInfo) -> None:
    proc = proc_of(cluster, victim)
    proc.send_signal(signal.SIGKILL)  # a stopped process dies of SIGKILL too
    proc.wait(10)


def succeeded_count(client: Client) -> int:
    return int(client.stats()["queue"]["states"]["SUCCEEDED"])


def successes(info: TaskInfo) -> int:
    return sum(1 for attempt in info.history if attempt.outcome == "succeeded")


def assert_each_succeeded_once(client: Client, specs: list[dict[str, Any]]) -> list[TaskInfo]:
    """Every task SUCCEEDED with its own value, and exactly one attempt committed a result."""
    infos = client.query_many([s["task_id"] for s in specs])
    not_done = [(i.task_id, i.state) for i in infos if i.state != "SUCCEEDED"]
    assert not not_done, f"{len(not_done)} task(s) did not succeed: {not_done[:5]}"
    wrong = [(i.task_id, i.value, s["args"][0]) for i, s in zip(infos, specs) if i.value != s["args"][0]]
    assert not wrong, f"task values differ from their arguments: {wrong[:5]}"
    twice = [(i.task_id, i.history) for i in infos if successes(i) != 1]
    assert not twice, f"task(s) without exactly one committed success: {twice[:3]}"
    queue = client.stats()["queue"]
    assert queue["states"]["SUCCEEDED"] == queue["submitted"] == len(specs), queue
    assert queue["states"]["FAILED"] == 0, queue
    return infos


def rerun_elsewhere(infos: list[TaskInfo], lost_worker_ids: set[str]) -> list[TaskInfo]:
    """Tasks a lost worker held that then succeeded on another worker in a later attempt."""
    found = []
    for info in infos:
        lost_on = {a.worker_id for a in info.history if a.outcome == "worker lost"}
        if lost_on & lost_worker_ids and info.attempt >= 2 and info.worker_id not in lost_worker_ids:
            found.append(info)
    return found


def run_load_and_kill(make_cluster: Callable[..., LocalCluster], seed: int, workers: int,
                      victims: int, tasks: int) -> None:
    """Submit ``tasks`` short sleeps, kill -9 ``victims`` workers at once a third of the way in, check."""
    rng = random.Random(seed)
    cluster = make_cluster(workers=workers, slots=2)
    with cluster.client(timeout_s=30) as client:
        cluster.wait_for_workers(client, workers)
        specs = sleep_specs(f"load{seed}", tasks, rng, 0.005, 0.02)
        handles = client.submit_many(specs)
        wait_until(lambda: succeeded_count(client) >= tasks // 3, 90, f"a third of {tasks} tasks to succeed")
        chosen = rng.sample(sorted(client.workers(), key=lambda w: w.worker_id), victims)
        try:
            for victim in chosen:
                freeze_while_holding(client, cluster, victim)
        finally:
            for victim in chosen:  # SIGKILL the frozen ones even if waiting for one failed
                kill_hard(cluster, victim)
        victim_ids = {v.worker_id for v in chosen}
        wait_until(lambda: not victim_ids & {w.worker_id for w in client.workers()}, 30,
                   f"the coordinator to drop killed worker(s) {sorted(victim_ids)}")

        values = client.gather(handles, timeout=120)

        assert values == [s["args"][0] for s in specs]
        infos = assert_each_succeeded_once(client, specs)
        moved = rerun_elsewhere(infos, victim_ids)
        assert moved, f"no task shows a 'worker lost' attempt on {sorted(victim_ids)} and a later success elsewhere"
        assert client.stats()["queue"]["requeued_lost"] >= len(moved) > 0
        survivors = {w.worker_id for w in client.workers()}
        assert len(survivors) == workers - victims and not survivors & victim_ids


# --------------------------------------------------------------------------- kill -9


def test_sigkill_of_one_worker_under_load_runs_its_tasks_elsewhere_and_each_succeeds_once(
        make_cluster: Callable[..., LocalCluster]) -> None:
    run_load_and_kill(make_cluster, seed=20240611, workers=3, victims=1, tasks=600)


def test_sigkill_of_half_the_workers_at_once_loses_no_task_and_commits_each_once(
        make_cluster: Callable[..., LocalCluster]) -> None:
    run_load_and_kill(make_cluster, seed=7, workers=4, victims=2, tasks=600)


# --------------------------------------------------------------------------- SIGSTOP past the timeout


def test_worker_stopped_past_the_timeout_is_evicted_its_late_results_are_stale_and_it_registers_again(
        make_cluster: Callable[..., LocalCluster]) -> None:
    rng = random.Random(42)
    cluster = make_cluster(workers=2, slots=2, coordinator_args=["--worker-timeout", "2"])
    with cluster.client(timeout_s=30) as client:
        cluster.wait_for_workers(client, 2)
        # Four tasks for four slots: each worker holds two.  They outlast the SIGSTOP's start
        # but end while the worker is stopped, so their results wait in its pipes.
        specs = sleep_specs("stop", 4, rng, 1.5, 2.0)
        handles = client.submit_many(specs)
        wait_until(lambda: all(w.running == w.slots for w in client.workers()), 30, "both workers to hold 2 tasks")
        victim = rng.choice(client.workers())
        stale_before = client.stats()["queue"]["stale_outcomes"]
        removed_before = client.stats()["workers"]["removed"]
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: worker_by_id(client, victim.worker_id) is None, 30,
                       f"the coordinator to evict stopped worker {victim.worker_id}")
            assert client.stats()["workers"]["removed"] == removed_before + 1

            values = client.gather(handles, timeout=60)

            assert values == [s["args"][0] for s in specs]
            first = {i.task_id: i for i in assert_each_succeeded_once(client, specs)}
            moved = rerun_elsewhere(list(first.values()), {victim.worker_id})
            assert len(moved) == 2, f"expected the 2 tasks of {victim.worker_id} to re-run elsewhere: {first}"
        finally:
            os.kill(victim.pid, signal.SIGCONT)

        # Awake again: its two old-attempt results arrive and must be dropped as stale, and
        # its next heartbeat, from a connection the coordinator forgot, earns a Reregister.
        wait_until(lambda: client.stats()["queue"]["stale_outcomes"] >= stale_before + 2, 30,
                   f"the 2 late results of {victim.worker_id} to be counted stale")
        back = wait_until(lambda: worker_by_id(client, victim.worker_id), 30,
                          f"{victim.worker_id} to register again")
        assert back.pid == victim.pid and back.state == "ALIVE"
        assert proc_of(cluster, victim).poll() is None
        after = {i.task_id: i for i in client.query_many(first)}
        assert after == first, "a late result changed a task that was already committed"

        # And it takes work again.
        more = client.submit_many(sleep_specs("after", 8, rng, 0.01, 0.05))
        assert len(client.gather(more, timeout=60)) == 8


# --------------------------------------------------------------------------- tasks that kill workers


def test_task_that_kills_its_worker_process_is_quarantined_and_the_workers_keep_serving(
        make_cluster: Callable[..., LocalCluster]) -> None:
    rng = random.Random(3)
    cluster = make_cluster(workers=2, slots=2)
    with cluster.client(timeout_s=30) as client:
        workers_before = {w.worker_id: w.pid for w in cluster.wait_for_workers(client, 2)}
        bystanders = sleep_specs("bystander", 40, rng, 0.01, 0.05)
        crash = client.submit("actorsched.tasks:crash", task_id="poison")
        handles = client.submit_many(bystanders)

        info = wait_until(lambda: (i := client.query("poison")).state in ("SUCCEEDED", "FAILED") and i, 60,
                          "the crashing task to reach a final state")

        assert info.state == "FAILED", info
        assert info.error is not None and info.error.type == "KilledWorker", info.error
        assert "max_worker_deaths=3" in info.error.message
        assert [a.outcome for a in info.history] == ["failed"] * 3, info.history
        assert all(a.error is not None and a.error.type == "ChildProcessDied" for a in info.history)
        assert crash.done()
        assert client.gather(handles, timeout=60) == [s["args"][0] for s in bystanders]
        assert {w.worker_id: w.pid for w in client.workers()} == workers_before
        assert all(proc.poll() is None for proc in cluster.worker_procs)

        # The dead children were replaced: both workers keep running tasks on all their slots.
        later = client.submit_many([{"name": "actorsched.tasks:pid"} for _ in range(40)])
        pids = client.gather(later, timeout=60)
        assert all(isinstance(p, int) and p > 0 for p in pids)
        assert not set(pids) & set(workers_before.values()), "tasks must run in child processes"
        queue = client.stats()["queue"]
        assert queue["states"]["FAILED"] == 1 and queue["states"]["SUCCEEDED"] == 80, queue
