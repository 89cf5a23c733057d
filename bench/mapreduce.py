"""A 1,000-task map-reduce DAG from the client API: tasks/s.

1,000 map tasks (``echo``), then one reduce task (``add``) whose arguments are
``actorsched.ref`` to every map task, so the coordinator holds the DAG and hands the
map results to the reducer.  Timed from the first submit to the reduce result.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import figure, median  # noqa: E402

import actorsched  # noqa: E402
from actorsched.localcluster import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--maps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = []
    with LocalCluster(workers=args.workers, slots=args.slots) as cluster, cluster.client(timeout_s=60) as client:
        cluster.wait_for_workers(client, args.workers)
        for run in range(args.runs):
            started = time.perf_counter()
            maps = client.submit_many({"task_id": f"map-{run}-{i}", "name": "actorsched.tasks:echo", "args": [i]}
                                      for i in range(args.maps))
            total = client.submit("actorsched.tasks:add", *[actorsched.ref(m) for m in maps])
            value = total.result(timeout=300)
            elapsed = time.perf_counter() - started
            assert value == sum(range(args.maps)), value
            rates.append((args.maps + 1) / elapsed)
            print(f"  run {run + 1}: {elapsed:.3f} s, {rates[-1]:,.0f} tasks/s", flush=True)
    print(f"map-reduce: {args.maps} maps + 1 reduce, {args.workers} workers x {args.slots} slots")
    figure("map-reduce median", median(rates), "tasks/s")


if __name__ == "__main__":
    main()
