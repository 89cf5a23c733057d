"""The main job (``make demo``): a local cluster runs a real workload through a worker crash.

A coordinator (with its SQLite journal) and four worker processes start on this
machine.  A few thousand tasks of mixed kinds and priorities go in through the client
API; when about a third are done, one worker is killed with SIGKILL.  Its tasks run
again elsewhere.  Progress shows while it runs (a bar redrawn in place on a terminal,
a plain line every few seconds when the output goes to a file or a pipe) and a summary
follows: tasks per worker, retries, wall time, tasks/s.  Exit status 0 means every task
succeeded and every process started here was stopped.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import time
from typing import Any

from actorsched.cli import Progress
from actorsched.localcluster import LocalCluster

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def workload(count: int, seed: int) -> list[dict[str, Any]]:
    """Mixed tasks: quick echoes, short sleeps and CPU spins, priorities 0..9."""
    rng = random.Random(seed)
    specs: list[dict[str, Any]] = []
    for i in range(count):
        args: list[Any]
        kind = rng.random()
        if kind < 0.5:
            name, args = "actorsched.tasks:echo", [i]
        elif kind < 0.8:
            name, args = "actorsched.tasks:sleep", [round(rng.uniform(0.01, 0.06), 4)]
        else:
            name, args = "actorsched.tasks:spin", [round(rng.uniform(0.001, 0.008), 4)]
        specs.append({"task_id": f"demo-{seed}-{i:05d}", "name": name, "args": args, "priority": rng.randrange(10)})
    return specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="actorsched-demo", description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2: one of them is killed during the run")

    print(f"starting a coordinator and {args.workers} workers ({args.slots} slots each) on 127.0.0.1 ...")
    with LocalCluster(workers=args.workers, slots=args.slots,
                      coordinator_args=["--worker-timeout", "3"]) as cluster, cluster.client() as client:
        cluster.wait_for_workers(client, args.workers)
        print(f"coordinator at {cluster.client_endpoint}, journal in {cluster.state_dir}")
        specs = workload(args.tasks, args.seed)
        started = time.monotonic()
        handles = client.submit_many(specs)
        print(f"submitted {len(handles)} tasks in {time.monotonic() - started:.2f} s (priorities 0..9)")
        victim = cluster.worker_procs[0]
        killed_at: float | None = None
        done: dict[str, Any] = {}
        progress = Progress(len(handles), sys.stdout)
        for handle in client.as_completed(handles, timeout=600):
            info = done[handle.task_id] = handle.info()
            progress.update(failed=info.state != "SUCCEEDED")
            if killed_at is None and len(done) >= len(handles) // 3:
                victim.send_signal(signal.SIGKILL)
                killed_at = time.monotonic() - started
                progress.note(f"killed worker-1 (pid {victim.pid}) with SIGKILL at {killed_at:.2f} s")
        progress.close()
        wall = time.monotonic() - started
        infos = list(done.values())
        stats = client.stats()
    return summarize(infos, stats, wall)


def summarize(infos: list[Any], stats: dict[str, Any], wall_s: float) -> int:
    states = collections.Counter(info.state for info in infos)
    per_worker = collections.Counter(info.worker_id for info in infos if info.state == "SUCCEEDED")
    rerun = sum(1 for info in infos if info.attempt > 1)
    queue = stats.get("queue", {})
    print("\nsummary")
    print(f"  tasks            {len(infos)}  ({', '.join(f'{k} {v}' for k, v in sorted(states.items()))})")
    for worker_id, count in sorted(per_worker.items()):
        print(f"  done by {worker_id:<9}{count}")
    print(f"  ran again        {rerun} tasks (attempts lost with the killed worker: "
          f"{queue.get('requeued_lost', '?')}, attempts retried in all: {queue.get('retries', '?')})")
    print(f"  wall time        {wall_s:.2f} s")
    print(f"  throughput       {len(infos) / wall_s:.0f} tasks/s")
    ok = states.get("SUCCEEDED", 0) == len(infos)
    print("  result           " + ("every task succeeded" if ok else "SOME TASKS DID NOT SUCCEED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
