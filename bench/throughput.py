"""End-to-end throughput: 10,000 no-op tasks through 4 worker processes, median of 3 runs.

Timed from the first submit to the last result reaching the client.  Workers run on
this machine (2 cores here), so the coordinator, the workers, their child processes
and the client share the CPU.  Prints figures; it is not a pass/fail test.

``--postgresql`` puts the journal in a real PostgreSQL server started for the run
(tests/pgserver.py, fsync on, like the SQLite journal's default) instead of SQLite; the
server's CPU is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402
from _common import figure, median  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402


def one_run(client: object, tasks: int, run: int) -> float:
    specs = [{"task_id": f"tp-{run}-{time.time_ns()}-{i}", "name": "actorsched.tasks:noop"} for i in range(tasks)]
    started = time.perf_counter()
    handles = client.submit_many(specs)  # type: ignore[attr-defined]
    results = client.gather(handles, timeout=600)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert len(results) == tasks
    return tasks / elapsed


def cpu_by_kind(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds (user + sys) so far of each process kind; children that exited are not counted."""
    def cpu(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
            return times.user + times.system
        except psutil.Error:
            return 0.0

    assert cluster.coordinator is not None
    workers = [psutil.Process(p.pid) for p in cluster.worker_procs if p.poll() is None]
    children = [c for w in workers for c in w.children(recursive=True)]
    return {"coordinator": cpu(psutil.Process(cluster.coordinator.pid)),
            "workers": sum(cpu(w) for w in workers),
            "children": sum(cpu(c) for c in children),
            "client": cpu(psutil.Process())}


@contextlib.contextmanager
def postgresql_config() -> Iterator[tuple[list[str], psutil.Process]]:
    """Coordinator arguments for a journal in a fresh PostgreSQL server, and that server's process."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from pgserver import PgServer

    with PgServer(durable=True) as pg, tempfile.TemporaryDirectory(prefix="actorsched-bench-") as tmp:
        config = os.path.join(tmp, "coordinator.toml")
        with open(config, "w") as out:
            out.write(f'[journal]\nbackend = "postgresql"\ndsn = "{pg.create_database("throughput")}"\n')
        assert pg.pid is not None
        yield ["--config", config], psutil.Process(pg.pid)


def server_cpu(postmaster: psutil.Process | None) -> float:
    if postmaster is None:
        return 0.0
    total = 0.0
    for proc in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--postgresql", action="store_true", help="journal in PostgreSQL instead of SQLite")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        extra, postmaster = (["--no-journal"], None) if args.no_journal else ([], None)
        if args.postgresql:
            extra, postmaster = stack.enter_context(postgresql_config())
        cluster = stack.enter_context(LocalCluster(workers=args.workers, slots=args.slots, coordinator_args=extra))
        client = stack.enter_context(cluster.client(timeout_s=60))
        cluster.wait_for_workers(client, args.workers)
        one_run(client, 500, -1)  # warm-up
        rates = []
        before = cpu_by_kind(cluster) | {"postgresql": server_cpu(postmaster)}
        for run in range(args.runs):
            rate = one_run(client, args.tasks, run)
            rates.append(rate)
            print(f"  run {run + 1}: {rate:,.0f} tasks/s", flush=True)
        after = cpu_by_kind(cluster) | {"postgresql": server_cpu(postmaster)}
    per_task = {kind: (after[kind] - before[kind]) * 1e6 / (args.tasks * args.runs) for kind in after
                if kind != "postgresql" or args.postgresql}
    journal = "off" if args.no_journal else ("on (PostgreSQL)" if args.postgresql else "on (SQLite)")
    print(f"throughput: {args.tasks} no-op tasks, {args.workers} workers x {args.slots} slots, journal {journal}")
    figure("throughput median", median(rates), "tasks/s", f"runs: {', '.join(f'{r:,.0f}' for r in rates)}")
    for kind, micros in per_task.items():
        figure(f"CPU per task: {kind}", micros, "us")
    figure("CPU per task: total", sum(per_task.values()), "us")


if __name__ == "__main__":
    main()
