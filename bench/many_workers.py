"""Many real workers: start-up time, process count and memory, and throughput at 64 workers vs 4.

For each configuration (``--workers`` x ``--slots``, default 64 x 1, then ``--compare``
x ``--slots``, default 4 x 1) a fresh ``LocalCluster`` is started: the coordinator first
(journal on unless ``--no-journal``), then, timed, the real ``bin/worker`` processes.

(a) Start-up.  ``t0`` is taken just before the first worker process is started.
*registered* is when ``client.workers()`` first lists every worker (polled every 20 ms).
Then workers x slots ``actorsched.tasks:sleep(--sleep)`` tasks are submitted, and
``client.query_many`` is polled (every 20 ms) until all of them are RUNNING at the same
time: *all slots usable* is the first poll that sees that.  A worker reports RUNNING only
from the child process running the task (its ``Started`` follows the child taking the
job), and with one task per slot, all of them RUNNING at once proves every slot of
every worker is up and reachable.  If any task finishes before all run at once (start-up
spread over more than ``--sleep`` s), the barrier failed and is reported as such.

(b) Processes and memory, read while the barrier tasks still sleep: the coordinator,
every worker and all their descendants (``psutil`` ``children(recursive=True)``), each
classified as worker / forkserver / resource tracker / slot child (a child of the
forkserver) / other, with RSS and, from ``memory_full_info`` (smaps, timed and printed),
USS (memory only that process holds) and PSS (shared pages divided among their users).
RSS double-counts what forked children share; PSS sums to the real total.  One worker's
process tree is printed in full.  Then, once: the time and memory of a fresh interpreter
importing what each kind of process imports (bare Python; the forkserver's preload;
the worker's main module; the resource tracker; and what every slot child does on top
of the preload it inherits: multiprocessing re-runs the parent's main script,
``bin/worker``, as ``__mp_main__``), each in its own subprocess.  The one-worker tree
shows whether libzmq is mapped in each process (from ``/proc/PID/maps``).

(c) Throughput: ``--tasks`` no-op tasks submitted with ``submit_many`` and ``gather``-ed
(as bench/throughput.py does), after a 500-task warm-up; median of ``--runs``.  The
ratio of the two configurations' medians is printed last.  Everything shares this
machine's CPUs (2 cores here).  Prints figures; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import figure, median  # noqa: E402

import actorsched  # noqa: E402
from actorsched.localcluster import LocalCluster  # noqa: E402

POLL_S = 0.02
MB = 1024 * 1024
ROLES = ("coordinator", "worker", "forkserver", "resource tracker", "slot child", "other")


# --------------------------------------------------------------------------- process tree


@dataclasses.dataclass
class ProcInfo:
    pid: int
    ppid: int
    role: str
    rss: int
    uss: int
    pss: int
    threads: int
    cmdline: str
    zmq: bool


def classify(proc: psutil.Process, coordinator_pid: int, worker_pids: set[int], forkservers: set[int]) -> str:
    if proc.pid == coordinator_pid:
        return "coordinator"
    if proc.pid in worker_pids:
        return "worker"
    if proc.ppid() in forkservers:
        return "slot child"  # forked by the forkserver: same cmdline as its parent
    if proc.pid in forkservers:
        return "forkserver"
    if "resource_tracker" in " ".join(proc.cmdline()):
        return "resource tracker"
    return "other"


def maps_zmq(pid: int) -> bool:
    """Whether libzmq (hence pyzmq) is mapped into the process: a sign of what it imported."""
    try:
        with open(f"/proc/{pid}/maps") as file:
            return any("zmq" in line for line in file)
    except OSError:
        return False


def process_tree(coordinator_pid: int, worker_pids: list[int], full: bool) -> tuple[list[ProcInfo], float]:
    """Every process of the cluster, classified, and the seconds spent reading memory_full_info."""
    roots = [psutil.Process(coordinator_pid), *(psutil.Process(pid) for pid in worker_pids)]
    procs: list[psutil.Process] = []
    for root in roots:
        procs.append(root)
        procs.extend(root.children(recursive=True))
    forkservers: set[int] = set()
    for proc in procs:
        try:
            if proc.ppid() in worker_pids and "multiprocessing.forkserver" in " ".join(proc.cmdline()):
                forkservers.add(proc.pid)
        except psutil.NoSuchProcess:
            pass
    infos: list[ProcInfo] = []
    full_s = 0.0
    for proc in procs:
        try:
            with proc.oneshot():
                role = classify(proc, coordinator_pid, set(worker_pids), forkservers)
                rss = proc.memory_info().rss
                uss = pss = 0
                if full:
                    started = time.perf_counter()
                    mem = proc.memory_full_info()
                    full_s += time.perf_counter() - started
                    uss, pss = mem.uss, getattr(mem, "pss", 0)
                infos.append(ProcInfo(proc.pid, proc.ppid(), role, rss, uss, pss, proc.num_threads(),
                                      " ".join(proc.cmdline()), maps_zmq(proc.pid)))
        except psutil.NoSuchProcess:
            pass
    return infos, full_s


def print_tree(infos: list[ProcInfo], workers: int, full_s: float) -> dict[str, float]:
    total = {"processes": len(infos), "rss": sum(i.rss for i in infos) / MB,
             "uss": sum(i.uss for i in infos) / MB, "pss": sum(i.pss for i in infos) / MB}
    figure("processes (coordinator + workers + descendants)", total["processes"], "procs")
    figure("RSS sum", total["rss"], "MB", "counts shared pages once per process")
    if full_s:
        figure("PSS sum", total["pss"], "MB", f"the real total; memory_full_info took {full_s:.2f} s in all")
        figure("USS sum", total["uss"], "MB", "pages no other process shares")
    print(f"  {'role':<18} {'count':>5} {'RSS MB':>8} {'USS MB':>8} {'PSS MB':>8} {'threads':>8}  (means)")
    for role in ROLES:
        group = [i for i in infos if i.role == role]
        if group:
            n = len(group)
            print(f"  {role:<18} {n:>5} {sum(i.rss for i in group) / n / MB:>8.1f} "
                  f"{sum(i.uss for i in group) / n / MB:>8.1f} {sum(i.pss for i in group) / n / MB:>8.1f} "
                  f"{sum(i.threads for i in group) / n:>8.1f}")
    non_coord = [i for i in infos if i.role != "coordinator"]
    print(f"  per worker, everything but the coordinator: {len(non_coord) / workers:.2f} processes, "
          f"RSS {sum(i.rss for i in non_coord) / workers / MB:.1f} MB, "
          f"PSS {sum(i.pss for i in non_coord) / workers / MB:.1f} MB, "
          f"USS {sum(i.uss for i in non_coord) / workers / MB:.1f} MB", flush=True)
    return total


def print_one_worker(infos: list[ProcInfo], worker_pid: int) -> None:
    by_pid = {i.pid: i for i in infos}
    mine = [i for i in infos if i.pid == worker_pid]
    frontier = {worker_pid}
    while frontier:
        kids = [i for i in infos if i.ppid in frontier and i.pid not in frontier]
        mine.extend(kids)
        frontier = {i.pid for i in kids}
    print(f"  one worker's process tree (pid {worker_pid}):")
    for info in mine:
        depth = 0
        parent = info.ppid
        while parent in by_pid and parent != worker_pid and depth < 10:
            parent = by_pid[parent].ppid
            depth += 1
        indent = "  " * (0 if info.pid == worker_pid else depth + 1)
        print(f"    {indent}{info.role:<16} pid {info.pid:<7} RSS {info.rss / MB:6.1f} MB  USS {info.uss / MB:6.1f} MB"
              f"  PSS {info.pss / MB:6.1f} MB  threads {info.threads:<3} libzmq {'yes' if info.zmq else 'no ':<3} "
              f"{info.cmdline[:70]}", flush=True)


IMPORT_PROBES: dict[str, tuple[str, str]] = {  # label: (untimed setup, timed imports)
    "bare interpreter": ("", ""),
    "forkserver preload (actorsched.tasks, actorsched.worker.executor)":
        ("", "import actorsched.tasks, actorsched.worker.executor"),
    "worker main (actorsched.worker.app)": ("", "import actorsched.worker.app"),
    "resource tracker (multiprocessing.resource_tracker)": ("", "import multiprocessing.resource_tracker"),
    "slot child: bin/worker re-run as __mp_main__ after the preload": (
        "import actorsched.tasks, actorsched.worker.executor",
        f"import runpy; runpy.run_path({os.path.join(ROOT, 'bin', 'worker')!r}, run_name='__mp_main__')"),
}
PROBE = """\
import sys, time
sys.path.insert(0, {root!r})
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
{setup}
before, started = rss(), time.perf_counter()
{code}
print(time.perf_counter() - started, before, rss())
"""


def import_costs(python: str, timeout_s: float) -> None:
    """Wall time, and RSS before/after, of each probe's imports in a fresh interpreter."""
    print("  import cost in a fresh interpreter (one subprocess each, median of 3):")
    for label, (setup, code) in IMPORT_PROBES.items():
        samples: list[tuple[float, float, float, float]] = []
        for _ in range(3):
            started = time.perf_counter()
            out = subprocess.run([python, "-c", PROBE.format(root=ROOT, setup=setup, code=code)], capture_output=True,
                                 text=True, timeout=timeout_s, cwd=ROOT, check=True).stdout.split()
            samples.append((time.perf_counter() - started, float(out[0]), float(out[1]), float(out[2])))
        process_s = median([s[0] for s in samples])
        import_s = median([s[1] for s in samples])
        print(f"    {label:<64} process {process_s * 1000:5.0f} ms, imports {import_s * 1000:5.0f} ms, "
              f"RSS {median([s[2] for s in samples]):5.1f} -> {median([s[3] for s in samples]):5.1f} MB",
              flush=True)


# --------------------------------------------------------------------------- one configuration


def remaining(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def barrier(client: Any, count: int, sleep_s: float, deadline: float) -> tuple[float | None, str]:
    """Submit ``count`` sleep tasks; the time at which all were first seen RUNNING together."""
    run = f"mw-barrier-{time.time_ns()}"
    ids = [f"{run}-{i}" for i in range(count)]
    client.submit_many([{"task_id": t, "name": "actorsched.tasks:sleep", "args": [sleep_s]} for t in ids])
    most = 0
    while time.monotonic() < deadline:
        states = [info.state for info in client.query_many(ids)]
        now = time.monotonic()
        running = states.count("RUNNING")
        most = max(most, running)
        if running == count:
            return now, f"{count} tasks RUNNING together"
        done = [s for s in states if s in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if done:
            return None, (f"barrier failed: {len(done)} task(s) ended before all {count} ran together "
                          f"(at most {most} RUNNING at once); raise --sleep")
        time.sleep(POLL_S)
    return None, f"barrier timed out (at most {most} RUNNING at once)"


def throughput(client: Any, tasks: int, runs: int, deadline: float) -> list[float]:
    rates = []
    for run in range(-1, runs):
        count = 500 if run < 0 else tasks  # run -1 is the warm-up
        specs = [{"task_id": f"mw-{run}-{time.time_ns()}-{i}", "name": "actorsched.tasks:noop"} for i in range(count)]
        started = time.perf_counter()
        handles = client.submit_many(specs)
        results = client.gather(handles, timeout=remaining(deadline))
        elapsed = time.perf_counter() - started
        assert len(results) == count
        if run >= 0:
            rates.append(count / elapsed)
            print(f"  run {run + 1}: {count / elapsed:,.0f} tasks/s", flush=True)
    return rates


def configuration(workers: int, slots: int, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    journal = "off" if args.no_journal else "on"
    print(f"\n== {workers} workers x {slots} slot(s), journal {journal}", flush=True)
    extra = ["--no-journal"] if args.no_journal else []
    result: dict[str, Any] = {}
    with LocalCluster(workers=0, slots=slots, coordinator_args=extra) as cluster, \
            cluster.client(timeout_s=60) as client:
        assert cluster.coordinator is not None
        t0 = time.monotonic()
        for _ in range(workers):
            cluster.add_worker()
        spawned = time.monotonic()
        registered = None
        while time.monotonic() < deadline:
            if len(client.workers()) >= workers:
                registered = time.monotonic()
                break
            time.sleep(POLL_S)
        if registered is None:
            raise TimeoutError(f"{workers} workers did not register within --timeout")
        usable, note = barrier(client, workers * slots, args.sleep, deadline)
        figure("start worker processes (Popen x N)", spawned - t0, "s")
        figure("t0 -> all workers registered", registered - t0, "s", f"{workers} workers")
        if usable is not None:
            figure("t0 -> all slots usable (barrier)", usable - t0, "s", note)
        else:
            print(f"  {note}", flush=True)
        result["usable_s"] = None if usable is None else usable - t0
        result["registered_s"] = registered - t0
        worker_pids = [p.pid for p in cluster.worker_procs]
        infos, full_s = process_tree(cluster.coordinator.pid, worker_pids, full=not args.no_uss)
        result["tree"] = print_tree(infos, workers, full_s)
        print_one_worker(infos, worker_pids[0])
        # let the barrier tasks finish before timing throughput
        time.sleep(min(args.sleep, remaining(deadline)))
        result["rates"] = throughput(client, args.tasks, args.runs, deadline)
        rates = result["rates"]
        figure("throughput median", median(rates), "tasks/s", f"runs: {', '.join(f'{r:,.0f}' for r in rates)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--compare", type=int, default=4, help="workers of the comparison configuration (0: none)")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each barrier task sleeps")
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--no-uss", action="store_true", help="skip memory_full_info (USS/PSS)")
    parser.add_argument("--no-imports", action="store_true", help="skip the import-cost probes")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the whole benchmark, s")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    print(f"many workers: {args.workers} and {args.compare} real workers x {args.slots} slot(s), "
          f"{args.tasks} no-op tasks x {args.runs} runs; actorsched from {os.path.dirname(actorsched.__file__)}",
          flush=True)
    main_result = configuration(args.workers, args.slots, args, deadline)
    other = configuration(args.compare, args.slots, args, deadline) if args.compare > 0 else None
    if not args.no_imports:
        print()
        import_costs(sys.executable, timeout_s=remaining(deadline))
    if other is not None:
        print()
        ratio = median(main_result["rates"]) / median(other["rates"])
        figure(f"throughput {args.workers} / {args.compare} workers", ratio, "x")
        extra = args.workers - args.compare
        a, b = main_result["tree"], other["tree"]
        figure("marginal processes per extra worker", (a["processes"] - b["processes"]) / extra, "procs")
        figure("marginal RSS per extra worker", (a["rss"] - b["rss"]) / extra, "MB")
        if not args.no_uss:
            figure("marginal PSS per extra worker", (a["pss"] - b["pss"]) / extra, "MB")


if __name__ == "__main__":
    main()
