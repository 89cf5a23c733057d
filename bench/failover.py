"""Time from a worker's death to its tasks running elsewhere.

Two workers; long tasks fill worker-1; then worker-1 is killed.  Two ways to die:
SIGKILL (the TCP connection closes and the coordinator notices at once) and SIGSTOP
(silent: only missing heartbeats tell).  Each with the default liveness settings and
with a fast profile (0.5 s heartbeats, 2 s timeout).  Prints seconds until every task
the dead worker held is RUNNING again on the other worker.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-default-sigstop", action="store_true", help="skip the ~15 s default-profile case")
    args = parser.parse_args()
    print("failover: seconds from a worker's death to its 2 tasks RUNNING on another worker")
    for profile in ("default", "fast"):
        for how in (signal.SIGKILL, signal.SIGSTOP):
            if profile == "default" and how == signal.SIGSTOP and args.skip_default_sigstop:
                continue
            figure(f"{profile} profile, {how.name}", measure(profile, how), "s")


if __name__ == "__main__":
    main()
