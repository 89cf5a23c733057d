"""Retry storm: every task fails twice, then succeeds.  Coordinator CPU must stay bounded.

Submits ``actorsched.tasks:flaky(2)`` tasks (3 attempts each, backoff base 10 ms) and
reports wall time, attempts/s and the coordinator's CPU seconds per attempt (from
psutil), next to the same figure for tasks that succeed at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import figure  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def one(client: object, coordinator_pid: int, tasks: int, failures: int, tag: str) -> tuple[float, float]:
    before = cpu_s(coordinator_pid)
    started = time.perf_counter()
    handles = client.submit_many(  # type: ignore[attr-defined]
        {"task_id": f"{tag}-{i}", "name": "actorsched.tasks:flaky", "args": [failures, i], "max_attempts": 4}
        for i in range(tasks))
    values = client.gather(handles, timeout=600)  # type: ignore[attr-defined]
    wall = time.perf_counter() - started
    assert values == list(range(tasks))
    attempts = tasks * (failures + 1)
    return wall, (cpu_s(coordinator_pid) - before) / attempts * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args()
    config = os.path.join(os.path.dirname(os.path.abspath(__file__)), "retry_storm.toml")
    with LocalCluster(workers=4, slots=4, coordinator_args=["--config", config]) as cluster, \
            cluster.client(timeout_s=60) as client:
        cluster.wait_for_workers(client, 4)
        assert cluster.coordinator is not None
        pid = cluster.coordinator.pid
        calm_wall, calm_cpu = one(client, pid, args.tasks, 0, "calm")
        storm_wall, storm_cpu = one(client, pid, args.tasks, 2, "storm")
        retries = client.stats()["queue"]["retries"]
    print(f"retry storm: {args.tasks} tasks, each failing twice then succeeding (retries counted: {retries})")
    figure("no failures: wall", calm_wall, "s")
    figure("no failures: coordinator CPU per attempt", calm_cpu, "us")
    figure("storm: wall", storm_wall, "s")
    figure("storm: attempts/s", args.tasks * 3 / storm_wall, "1/s")
    figure("storm: coordinator CPU per attempt", storm_cpu, "us")


if __name__ == "__main__":
    main()
