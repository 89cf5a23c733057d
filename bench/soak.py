"""Soak: 10,000 tasks while 100 workers join and leave (half SIGTERM, half SIGKILL); nothing may leak.

A real coordinator and ``--workers`` long-lived real workers are started with
:class:`~actorsched.localcluster.LocalCluster`.  Then ``--cycles`` times: one more worker
joins (``bin/worker``, waited for until the coordinator lists it), a batch of the
``--tasks`` short ``actorsched.tasks:sleep`` tasks is submitted, and a joined worker
leaves: SIGTERM on even cycles (it drains and exits), SIGKILL on odd ones (its tasks are
re-run elsewhere).  The long-lived workers stay the whole time, so their figures before
and after compare the same processes.

Printed, for every process (the coordinator and each surviving worker), before the
cycles and after every task finished: threads, open fds, RSS, child processes (and how
many of them are zombies).  Also: the processes a SIGKILLed worker left behind (its
forkserver and task children must exit on their own), the coordinator's worker list and
counters at the end, and every task's outcome: all must succeed with their own value;
tasks that ran more than once (re-runs after a SIGKILL) are counted.

Every loop is bounded by a count and by ``--time-limit``; every process started is
stopped by PID in ``finally`` (LocalCluster.stop, plus a SIGKILL of any leftover
descendant of a killed worker).  Exit status 0 only if every check held.

    .venv/bin/python bench/soak.py --tasks 1000 --cycles 10
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402
from _common import wait_final  # noqa: E402

from actorsched.localcluster import LocalCluster, wait_until  # noqa: E402

SLEEP = "actorsched.tasks:sleep"


def snapshot(pid: int) -> dict[str, Any]:
    """Threads, fds, RSS and children of one process (None figures if it is gone)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            children = proc.children(recursive=True)
            zombies = 0
            for child in children:
                try:
                    zombies += child.status() == psutil.STATUS_ZOMBIE
                except psutil.Error:
                    pass
            return {"pid": pid, "threads": proc.num_threads(), "fds": proc.num_fds(),
                    "rss_mb": proc.memory_info().rss / 1e6, "children": len(children), "zombies": zombies}
    except psutil.Error:
        return {"pid": pid, "threads": None, "fds": None, "rss_mb": None, "children": None, "zombies": None}


def show(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(title)
    print(f"  {'process':<22} {'pid':>8} {'threads':>8} {'fds':>6} {'RSS MB':>8} {'children':>9} {'zombies':>8}")
    for name, row in rows.items():
        rss = f"{row['rss_mb']:.1f}" if row["rss_mb"] is not None else "-"
        print(f"  {name:<22} {row['pid']:>8} {row['threads']!s:>8} {row['fds']!s:>6} {rss:>8} "
              f"{row['children']!s:>9} {row['zombies']!s:>8}")


def processes(cluster: LocalCluster, names: dict[int, str]) -> dict[str, dict[str, Any]]:
    assert cluster.coordinator is not None
    rows = {"coordinator": snapshot(cluster.coordinator.pid)}
    for proc in cluster.worker_procs:
        if proc.poll() is None and proc.pid in names:
            rows[names[proc.pid]] = snapshot(proc.pid)
    return rows


def descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def started_at(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return -1.0


def still_running(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=100, help="worker joins, each followed by a leave")
    parser.add_argument("--workers", type=int, default=2, help="long-lived workers (never stopped)")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--task-s", type=float, default=0.02, help="how long each task sleeps")
    parser.add_argument("--settle-s", type=float, default=5.0, help="pause before the 'after' figures")
    parser.add_argument("--time-limit", type=float, default=1200.0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.time_limit
    ok = True
    leftovers: list[tuple[int, float]] = []  # (pid, start time) of stopped workers' descendants
    with LocalCluster(workers=args.workers, slots=args.slots,
                      coordinator_args=["--worker-timeout", "5"]) as cluster, \
            cluster.client(timeout_s=60) as client:
        try:
            assert cluster.coordinator is not None
            cluster.wait_for_workers(client, args.workers, timeout_s=60)
            names = {proc.pid: f"worker-{i + 1} (long-lived)" for i, proc in enumerate(cluster.worker_procs)}
            warm = client.submit_many([{"task_id": f"soak-warm-{i}", "name": SLEEP, "args": [0.0]} for i in range(50)])
            client.gather(warm, timeout=60)
            time.sleep(1.0)
            before = processes(cluster, names)
            show("before the cycles:", before)

            per_cycle = [args.tasks // max(1, args.cycles) + (1 if c < args.tasks % max(1, args.cycles) else 0)
                         for c in range(max(1, args.cycles))]
            ids: list[str] = []
            leaves: collections.Counter[str] = collections.Counter()
            orphans: list[int] = []
            drain_s: list[float] = []
            how_left: dict[str, str] = {}  # joined worker id -> the signal that stopped it
            started = time.monotonic()
            for cycle in range(args.cycles):
                if time.monotonic() > deadline:
                    print(f"time limit reached after {cycle} cycles", flush=True)
                    ok = False
                    break
                proc = cluster.add_worker()
                worker_id = str(proc.args[proc.args.index("--worker-id") + 1])  # type: ignore[union-attr,index]
                wait_until(lambda worker_id=worker_id: worker_id in {w.worker_id for w in client.workers()}, 60,
                           f"{worker_id} to register", interval_s=0.05)
                specs = [{"task_id": f"soak-{cycle:03d}-{i:04d}", "name": SLEEP, "args": [args.task_s]}
                         for i in range(per_cycle[cycle])]
                client.submit_many(specs)
                ids += [s["task_id"] for s in specs]
                time.sleep(0.2)  # let the new worker take some of them
                kids = descendants(proc.pid)
                how_left[worker_id] = "SIGTERM" if cycle % 2 == 0 else "SIGKILL"
                if cycle % 2 == 0:
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                        leaves["SIGTERM"] += 1
                        drain_s.append(time.monotonic() - t0)
                    except subprocess.TimeoutExpired:
                        print(f"  worker pid {proc.pid} did not exit within 30 s of SIGTERM; SIGKILL", flush=True)
                        proc.kill()
                        proc.wait(10)
                        leaves["SIGTERM ignored"] += 1
                        ok = False
                else:
                    proc.kill()
                    proc.wait(10)
                    leaves["SIGKILL"] += 1
                leftovers += [(pid, started_at(pid)) for pid in kids]
                # A dead worker's children exit on their own once their pipes close.
                try:
                    wait_until(lambda kids=kids: not still_running(kids), 10, "the worker's children to exit",
                               interval_s=0.05)
                except TimeoutError:
                    orphans += still_running(kids)
                if (cycle + 1) % 10 == 0:
                    print(f"  cycle {cycle + 1}/{args.cycles}: {len(ids)} tasks submitted, "
                          f"{time.monotonic() - started:.0f} s", flush=True)

            infos = wait_final(client, ids, max(10.0, deadline - time.monotonic()))
            time.sleep(args.settle_s)
            after = processes(cluster, names)
            show("after every task finished:", after)

            print("changes of the long-lived processes (after - before):")
            for name in before:
                b, a = before[name], after.get(name)
                if a is None or a["threads"] is None:
                    print(f"  {name}: GONE")
                    ok = False
                    continue
                print(f"  {name:<22} threads {a['threads'] - b['threads']:+d}, fds {a['fds'] - b['fds']:+d}, "
                      f"RSS {a['rss_mb'] - b['rss_mb']:+.1f} MB, children {a['children'] - b['children']:+d}, "
                      f"zombies {a['zombies']}")
                ok &= a["threads"] <= b["threads"] and a["fds"] <= b["fds"] and a["zombies"] == 0
                ok &= a["children"] <= b["children"]

            states = collections.Counter(i.state for i in infos)
            wrong = [i for i in infos if i.state == "SUCCEEDED" and i.value != args.task_s]
            reruns = sum(1 for i in infos if i.attempt > 1)
            lost_attempts = sum(1 for i in infos for h in i.history if h.outcome != "succeeded")
            lost_by: collections.Counter[str] = collections.Counter(
                f"{how_left.get(h.worker_id, 'long-lived worker')}: {h.outcome}"
                for i in infos for h in i.history if h.outcome != "succeeded")
            workers = client.workers()
            stats = client.stats()
            print(f"worker leaves: {dict(leaves)}; SIGTERM drain time median "
                  f"{sorted(drain_s)[len(drain_s) // 2] if drain_s else float('nan'):.2f} s, "
                  f"max {max(drain_s, default=float('nan')):.2f} s")
            print(f"processes left running by a stopped worker (forkserver, task children): {len(orphans)} "
                  f"{orphans[:10]}")
            print(f"coordinator lists {len(workers)} worker(s) at the end: {sorted(w.worker_id for w in workers)}")
            print(f"coordinator workers counters: {stats['workers']}")
            queue = stats["queue"]
            print("coordinator queue counters: " + ", ".join(
                f"{k} {queue[k]}" for k in ("submitted", "retries", "requeued_lost", "stale_outcomes", "quarantined")
                if k in queue))
            print(f"tasks: {len(ids)} submitted; by state {dict(states)}; with a wrong value {len(wrong)}; "
                  f"re-run (attempt > 1) {reruns}; attempts that did not succeed {lost_attempts} "
                  f"(by how their worker left: {dict(lost_by)})")
            all_good = states.get("SUCCEEDED", 0) == len(ids) == args.tasks and not wrong
            print(f"every task succeeded with its own value: {'yes' if all_good else 'NO'}")
            ok &= all_good and not orphans and len(workers) == args.workers
        finally:
            for pid, start in leftovers:  # only if it is still the very process seen (pids are reused)
                if pid in still_running([pid]) and started_at(pid) == start:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    print(f"\nsoak: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
