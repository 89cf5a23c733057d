"""Coordinator restart time with 100,000 tasks in the journal.

Submits the tasks with no worker connected (half are then finished by one worker if
``--finish`` is given), kills the coordinator with SIGKILL, starts it again on the same
journal, and reports the time until it prints "ready" (journal opened and replayed)
and until a client query answers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import figure  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    with LocalCluster(workers=0) as cluster:
        with cluster.client(timeout_s=120) as client:
            started = time.perf_counter()
            client.submit_many({"task_id": f"r-{i}", "name": "actorsched.tasks:noop", "priority": i % 10}
                               for i in range(args.tasks))
            submit_s = time.perf_counter() - started
        size_mb = os.path.getsize(os.path.join(cluster.state_dir or "", "journal.sqlite3")) / 1e6
        cluster.kill_coordinator(signal.SIGKILL)
        started = time.perf_counter()
        cluster.start_coordinator(timeout_s=300)
        ready_s = time.perf_counter() - started
        with cluster.client(timeout_s=120) as client:
            info = client.query(f"r-{args.tasks - 1}")
            answered_s = time.perf_counter() - started
            open_tasks = client.stats()["queue"]["open"]
    assert info.state in ("QUEUED", "RETRYING"), info
    print(f"restart: {args.tasks} queued tasks in the journal ({size_mb:.1f} MB); submitted in {submit_s:.1f} s")
    figure("restart to ready (journal replayed)", ready_s, "s")
    figure("restart to first query answered", answered_s, "s")
    figure("tasks open after restart", open_tasks, "tasks")


if __name__ == "__main__":
    main()
