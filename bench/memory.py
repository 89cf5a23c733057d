"""Coordinator memory: what finished tasks, unfinished tasks and large results cost it.

Three phases against a real coordinator with its journal:

1. ``--finished`` no-op tasks run to the end in batches; the coordinator's RSS is
   printed before and after (finished tasks should leave memory once durable).
2. ``--unfinished`` no-op tasks are submitted with no worker able to take them (a tag
   no worker has), then cancelled: RSS per unfinished task.
3. A query naming one task with a large result many times, and a query of many such
   tasks: the coordinator's peak RSS (VmHWM) during them.

Prints figures; it is not a pass/fail test.  Run it against an older tree to compare
(``cd OLD && python /path/to/bench/memory.py`` uses that tree's package).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402

MB = 1024 * 1024


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def peak(pid: int) -> float:
    """VmHWM (peak RSS) in MB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--unfinished", type=int, default=50_000)
    parser.add_argument("--result-mb", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=60, help="times one query names the large-result task")
    args = parser.parse_args()
    with LocalCluster(workers=2, slots=2) as cluster:
        assert cluster.coordinator is not None
        pid = cluster.coordinator.pid
        with cluster.client(timeout_s=120) as client:
            cluster.wait_for_workers(client, 2)
            batch = 5_000
            client.gather(client.submit_many([{"name": "actorsched.tasks:noop"} for _ in range(batch)]), timeout=600)
            before = rss(pid)
            started = time.perf_counter()
            done = batch
            while done < args.finished + batch:
                client.gather(client.submit_many([{"name": "actorsched.tasks:noop"} for _ in range(batch)]),
                              timeout=600)
                done += batch
            after = rss(pid)
            per_task = (after - before) * MB / args.finished
            print(f"finished tasks: {args.finished:,} in {time.perf_counter() - started:.1f} s; coordinator RSS "
                  f"{before:.1f} -> {after:.1f} MB ({per_task:.0f} bytes per finished task)")

            before = rss(pid)
            handles = client.submit_many([{"name": "actorsched.tasks:noop", "tags": ["nobody-has-this"]}
                                          for _ in range(args.unfinished)])
            after = rss(pid)
            print(f"unfinished tasks: {args.unfinished:,}; coordinator RSS {before:.1f} -> {after:.1f} MB "
                  f"({(after - before) * MB / args.unfinished:.0f} bytes per unfinished no-op task)")
            client.cancel_many([h.task_id for h in handles])

            size = int(args.result_mb * MB)
            big = client.submit_many([{"name": "actorsched.tasks:echo", "args": ["y" * size]} for _ in range(8)])
            client.gather(big, timeout=600)
            reset_peak(pid)
            base = rss(pid)
            ids = [h.task_id for h in big]
            client.query_many([ids[0]] * args.repeat)
            print(f"one {args.result_mb:g} MB result named {args.repeat} times in one query: coordinator peak RSS "
                  f"{peak(pid):.0f} MB (was {base:.0f} MB before)")
            reset_peak(pid)
            base = rss(pid)
            client.query_many(ids)
            print(f"8 results of {args.result_mb:g} MB in one query: coordinator peak RSS {peak(pid):.0f} MB "
                  f"(was {base:.0f} MB before)")
            stats = client.stats()["queue"]
            print(f"stats: tasks={stats.get('tasks')} in_memory={stats.get('in_memory', 'n/a')} "
                  f"forgotten={stats.get('forgotten', 'n/a')}")


if __name__ == "__main__":
    main()
