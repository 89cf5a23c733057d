"""Time from a worker's death to its tasks running elsewhere.

Two workers; long tasks fill worker-1; then worker-1 is killed.  Two ways to die:
SIGKILL (the TCP connection closes and the coordinator notices at once) and SIGSTOP
(silent: only missing heartbeats tell).  Each with the default liveness settings and
with a fast profile (0.5 s heartbeats, 2 s timeout).  Prints seconds until every task
the dead worker held is RUNNING again on the other worker.

Then the death of the child process running a task (kill -9 of the child, the worker
lives), with a slot free on another worker: milliseconds from the kill until the next
attempt is placed (ASSIGNED, its Assign has left the coordinator) and until it is seen
RUNNING (a worker reports RUNNING 5 ms after a start, so that figure includes 5 ms).
And the same kill while 200 queued 50 ms tasks wait: how many of them start before
the lost task runs again (a lost task keeps its place in line: 0 or 1 expected).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from _common import figure  # noqa: E402

from actorsched.localcluster import LocalCluster, wait_until  # noqa: E402

FAST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fast_liveness.toml")


def measure(profile: str, how: signal.Signals) -> float:
    extra = ["--config", FAST] if profile == "fast" else []
    with LocalCluster(workers=0, coordinator_args=extra) as cluster, cluster.client() as client:
        victim = cluster.add_worker(slots=2)
        cluster.wait_for_workers(client, 1)
        handles = [client.submit("actorsched.tasks:sleep", 30.0) for _ in range(2)]
        wait_until(lambda: all(h.status() == "RUNNING" for h in handles), 30, "tasks running on worker-1")
        cluster.add_worker(slots=2)
        cluster.wait_for_workers(client, 2)
        killed = time.perf_counter()
        victim.send_signal(how)
        try:
            wait_until(lambda: all((i := h.info()).state == "RUNNING" and i.attempt == 2 for h in handles),
                       120, "tasks running again on worker-2", interval_s=0.005)
            return time.perf_counter() - killed
        finally:
            if how == signal.SIGSTOP:
                victim.send_signal(signal.SIGCONT)


def slot_child(worker_pid: int) -> psutil.Process:
    """The one slot child of a 1-slot worker: forked by its forkserver, so a grandchild."""
    for proc in psutil.Process(worker_pid).children(recursive=True):
        if proc.ppid() != worker_pid:
            return proc
    raise RuntimeError(f"no slot child under worker {worker_pid}")


def measure_child_kill(queued: int) -> tuple[float, float, int]:
    """(ms to ASSIGNED, ms to RUNNING, queued tasks started before it) after kill -9 of its child."""
    with LocalCluster(workers=2, slots=1) as cluster, cluster.client() as client:
        cluster.wait_for_workers(client, 2)
        victim = client.submit("actorsched.tasks:sleep", 30.0)
        wait_until(lambda: victim.status() == "RUNNING", 30, "the victim running")
        others = client.submit_many({"name": "actorsched.tasks:sleep", "args": [0.05]} for _ in range(queued))
        holder = next(w for w in client.workers() if w.worker_id == victim.info().worker_id)
        child = slot_child(holder.pid)
        if queued:
            wait_until(lambda: any(h.status() == "RUNNING" for h in others), 30, "the other worker busy")
        started_before = sum(1 for info in client.query_many([h.task_id for h in others])
                             if info.state != "QUEUED")
        killed = time.perf_counter()
        child.kill()
        assigned = running = 0.0
        deadline = killed + 60
        while time.perf_counter() < deadline:
            info = victim.info()
            now = time.perf_counter()
            if info.attempt >= 2 and info.state in ("ASSIGNED", "RUNNING") and not assigned:
                assigned = now - killed
                ahead = sum(1 for i in client.query_many([h.task_id for h in others]) if i.state != "QUEUED")
            if info.attempt >= 2 and info.state == "RUNNING":
                running = now - killed
                break
        else:
            raise TimeoutError("the victim did not run again within 60 s")
        return assigned * 1000, running * 1000, (ahead - started_before) if queued else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-default-sigstop", action="store_true", help="skip the ~15 s default-profile case")
    parser.add_argument("--child-runs", type=int, default=5, help="runs of each child-kill case")
    parser.add_argument("--only-child", action="store_true", help="only the child-kill cases")
    args = parser.parse_args()
    print("failover: seconds from a worker's death to its 2 tasks RUNNING on another worker")
    for profile in () if args.only_child else ("default", "fast"):
        for how in (signal.SIGKILL, signal.SIGSTOP):
            if profile == "default" and how == signal.SIGSTOP and args.skip_default_sigstop:
                continue
            figure(f"{profile} profile, {how.name}", measure(profile, how), "s")
    for queued in (0, 200):
        runs = [measure_child_kill(queued) for _ in range(args.child_runs)]
        what = f"child kill -9, {queued} queued"
        figure(f"{what}: to ASSIGNED (median)", statistics.median(r[0] for r in runs), "ms",
               f"runs: {', '.join(f'{r[0]:.1f}' for r in runs)}")
        figure(f"{what}: to RUNNING (median)", statistics.median(r[1] for r in runs), "ms",
               f"runs: {', '.join(f'{r[1]:.1f}' for r in runs)}")
        if queued:
            figure(f"{what}: queued tasks started first (max)", max(r[2] for r in runs), "tasks")


if __name__ == "__main__":
    main()
