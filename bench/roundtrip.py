"""Sequential submit -> result round trip of a no-op task, p50/p99 in ms.

One coordinator (journal on, fsync on) and one worker with one slot on this machine;
each iteration submits ``actorsched.tasks:noop`` and waits for its result before the
next.  Prints figures; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import figure, percentile  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-journal", action="store_true")
    args = parser.parse_args()
    extra = ["--no-journal"] if args.no_journal else []
    with LocalCluster(workers=1, slots=1, coordinator_args=extra) as cluster, cluster.client() as client:
        cluster.wait_for_workers(client, 1)
        for _ in range(100):  # warm up imports, caches and connections
            client.submit("actorsched.tasks:noop").result(timeout=30)
        samples = []
        for _ in range(args.iterations):
            started = time.perf_counter()
            client.submit("actorsched.tasks:noop").result(timeout=30)
            samples.append((time.perf_counter() - started) * 1000)
    journal = "off" if args.no_journal else "on"
    print(f"roundtrip: {args.iterations} sequential no-op tasks, 1 worker x 1 slot, journal {journal}")
    figure("roundtrip p50", percentile(samples, 50), "ms")
    figure("roundtrip p99", percentile(samples, 99), "ms")
    figure("roundtrip mean", sum(samples) / len(samples), "ms")


if __name__ == "__main__":
    main()
