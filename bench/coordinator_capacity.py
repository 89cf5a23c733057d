"""Coordinator capacity: how many tasks/s one coordinator process sustains, and its CPU per task.

One real coordinator (``bin/coordinator`` on 127.0.0.1 ephemeral ports, journal on unless
``--no-journal``) and simulated workers instead of real ones: real ZeroMQ DEALER peers
speaking the wire protocol, spread over ``--procs`` processes (one ``zmq.Poller`` each).
Each simulated worker registers (``Register``) with ``--slots`` slots, heartbeats every
``Welcome.heartbeat_interval_s`` (``running`` empty: it holds nothing) and answers every
``Assign`` at once with one ``Results`` carrying an ok ``TaskOutcome`` per assignment
(echoing epoch and attempt).  Workers then cost next to nothing, so the coordinator is
the bottleneck being measured (on this 2-core machine it still shares the CPUs with the
client and the simulators, whose CPU is printed too).

A run: the client submits ``--tasks`` no-op tasks with ``submit_many`` in calls of
``--chunk`` tasks and waits for all of them with ``gather``; timed from the first submit
to ``gather`` returning.  Around that window the CPU times (user + system) of the
coordinator process, of each of its threads, of this client process and of the
simulator processes are read with psutil; they are printed as microseconds per task.
Thread names: Python 3.11 does not give its threads OS names, so the coordinator is
started with a ``sitecustomize`` (on ``PYTHONPATH``, generated in a temporary folder) that
records each Python thread's native id and name when it starts (pykka names actor
threads ``ClassName-N``); other threads (libzmq's ``ZMQbg/*``) are named from
``/proc/PID/task/TID/comm``.  ``--no-thread-names`` turns that off.  Finished tasks are
purged between runs (outside the timed window) so every run starts from the same state.
Prints figures; it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

import psutil
import zmq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Simulators, figure, median  # noqa: E402

import actorsched  # noqa: E402
from actorsched.localcluster import LocalCluster  # noqa: E402
from actorsched.protocol import (  # noqa: E402
    TO_WORKER_MESSAGES,
    Assign,
    CancelTasks,
    Codec,
    Heartbeat,
    Refused,
    Register,
    Reregister,
    Results,
    TaskOutcome,
    Welcome,
    encode,
)

THREAD_NAMES_ENV = "ACTORSCHED_BENCH_THREAD_NAMES"
SITECUSTOMIZE = f'''\
"""Written by bench/coordinator_capacity.py: record each Python thread's native id and name."""
import os as _os
import threading as _threading

_path = _os.environ.get({THREAD_NAMES_ENV!r})
if _path:
    _bootstrap_inner = _threading.Thread._bootstrap_inner

    def _named_bootstrap_inner(self):
        try:
            with open(_path, "a") as _file:
                _file.write(f"{{_threading.get_native_id()}} {{self.name}}\\n")
        except OSError:
            pass
        _bootstrap_inner(self)

    _threading.Thread._bootstrap_inner = _named_bootstrap_inner
'''


# --------------------------------------------------------------------------- messages, by keyword


def make_register(worker_id: str, host: str, pid: int, slots: int) -> Register:
    """A Register by keyword.  Fields this build's Register does not have are left out, and
    fields added later with defaults keep them, so the helper survives schema growth."""
    wanted: dict[str, Any] = {"worker_id": worker_id, "host": host, "pid": pid, "slots": slots,
                              "tags": [], "running": []}
    known = {f.name for f in dataclasses.fields(Register)}
    return Register(**{k: v for k, v in wanted.items() if k in known})


def make_heartbeat() -> Heartbeat:
    return Heartbeat(cpu_percent=1.0, memory_percent=1.0, running=[])


def ok_results(assign: Assign) -> Results:
    return Results(outcomes=[
        TaskOutcome(task_id=a.task_id, epoch=a.epoch, attempt=a.attempt, ok=True, value=None, error=None,
                    duration_s=0.0)
        for a in assign.assignments
    ])


# --------------------------------------------------------------------------- simulator (child process)


def simulate(proc: int, count: int, slots: int, endpoint: str, tag: str, lifetime_s: float,
             conn: Connection) -> None:
    """Own ``count`` DEALER sockets; on "go" register them, then answer Assigns until "stop"."""
    codec = Codec(TO_WORKER_MESSAGES)
    context = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    host = socket.gethostname()
    pid = os.getpid()
    counters = {"assign_messages": 0, "assigned": 0, "heartbeats": 0, "registers": 0, "reregister": 0,
                "refused": 0, "cancel_tasks": 0, "other_messages": 0, "send_again": 0}
    deadline = time.monotonic() + lifetime_s  # exits by itself, whatever happens to its parent
    try:
        conn.send(("started", proc, pid))
        if not conn.poll(lifetime_s) or conn.recv() != "go":
            return
        registers = []
        index: dict[Any, int] = {}
        for i in range(count):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, f"cap-{tag}-{proc}-{i}".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.connect(endpoint)
            index[sock] = i
            sockets.append(sock)
            registers.append(encode(make_register(f"cap-{tag}-{proc}-{i}", host, pid, slots)))

        def send(i: int, frames: list[bytes]) -> None:
            try:
                sockets[i].send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                counters["send_again"] += 1

        for i in range(count):
            send(i, registers[i])
            counters["registers"] += 1
        welcomed = [False] * count
        heartbeat_s = 1.0
        next_heartbeat = [deadline] * count
        heartbeat = encode(make_heartbeat())
        next_sweep = 0.0
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        control = conn.fileno()
        poller.register(control, zmq.POLLIN)
        while time.monotonic() < deadline:
            for item, _event in poller.poll(100):
                if item == control:
                    try:
                        command = conn.recv()
                    except EOFError:
                        return
                    if command == "stop":
                        conn.send(("counters", proc, counters))
                        return
                    continue
                i = index[item]
                sock = sockets[i]
                for _ in range(1000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    message = codec.decode(frames)
                    if isinstance(message, Assign):
                        counters["assign_messages"] += 1
                        counters["assigned"] += len(message.assignments)
                        send(i, encode(ok_results(message)))
                    elif isinstance(message, Welcome):
                        if message.heartbeat_interval_s > 0:
                            heartbeat_s = message.heartbeat_interval_s
                        next_heartbeat[i] = time.monotonic() + heartbeat_s
                        if not welcomed[i]:
                            welcomed[i] = True
                            if all(welcomed):
                                conn.send(("registered", proc))
                    elif isinstance(message, Reregister):
                        counters["reregister"] += 1
                        send(i, registers[i])
                        counters["registers"] += 1
                    elif isinstance(message, Refused):
                        counters["refused"] += 1
                    elif isinstance(message, CancelTasks):
                        counters["cancel_tasks"] += 1
                    else:
                        counters["other_messages"] += 1
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 0.1
                for i, due in enumerate(next_heartbeat):
                    if now >= due:
                        send(i, heartbeat)
                        counters["heartbeats"] += 1
                        next_heartbeat[i] = now + heartbeat_s
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


# --------------------------------------------------------------------------- parent


def cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class ThreadNames:
    """Native thread id -> name for the coordinator process."""

    def __init__(self, pid: int, path: str | None) -> None:
        self.pid = pid
        self.path = path
        self.names: dict[int, str] = {pid: "MainThread"}

    def refresh(self, tids: list[int]) -> None:
        if self.path is not None and os.path.exists(self.path):
            with open(self.path) as file:
                for line in file:
                    tid, _, name = line.strip().partition(" ")
                    if tid.isdigit():
                        self.names[int(tid)] = name
        for tid in tids:
            if tid not in self.names:
                try:
                    with open(f"/proc/{self.pid}/task/{tid}/comm") as file:
                        self.names[tid] = f"{file.read().strip()} (comm)"
                except OSError:
                    self.names[tid] = f"tid {tid}"

    def name(self, tid: int) -> str:
        return self.names.get(tid, f"tid {tid}")


@dataclasses.dataclass
class Snapshot:
    coordinator: float
    threads: dict[int, float]
    client: float
    sims: float


def snapshot(coordinator: psutil.Process, client: psutil.Process, sims: list[psutil.Process],
             names: ThreadNames) -> Snapshot:
    threads = {t.id: t.user_time + t.system_time for t in coordinator.threads()}
    names.refresh(list(threads))
    return Snapshot(cpu_s(coordinator), threads, cpu_s(client), sum(cpu_s(s) for s in sims))


@dataclasses.dataclass
class RunResult:
    rate: float
    wall_s: float
    coordinator_us: float
    client_us: float
    sims_us: float
    threads_s: dict[int, float]


def one_run(client: Any, tasks: int, chunk: int, run: int, deadline: float, measure: Any) -> RunResult:
    specs = [{"task_id": f"cap-{run}-{time.time_ns()}-{i}", "name": "actorsched.tasks:noop"} for i in range(tasks)]
    before: Snapshot = measure()
    started = time.perf_counter()
    handles = []
    for start in range(0, tasks, chunk):
        handles += client.submit_many(specs[start:start + chunk])
    results = client.gather(handles, timeout=max(1.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - started
    after: Snapshot = measure()
    assert len(results) == tasks
    threads = {tid: cpu - before.threads.get(tid, 0.0) for tid, cpu in after.threads.items()}
    per_task = 1e6 / tasks
    return RunResult(tasks / elapsed, elapsed, (after.coordinator - before.coordinator) * per_task,
                     (after.client - before.client) * per_task, (after.sims - before.sims) * per_task, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000, help="tasks per submit_many call")
    parser.add_argument("--workers", type=int, default=8, help="simulated workers")
    parser.add_argument("--slots", type=int, default=8, help="slots of each simulated worker")
    parser.add_argument("--procs", type=int, default=4, help="processes holding the simulated workers")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--no-thread-names", action="store_true", help="do not record the coordinator's thread names")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on the whole benchmark, s")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    journal = "off" if args.no_journal else "on"
    print(f"coordinator capacity: {args.tasks} no-op tasks in submit_many calls of {args.chunk}, "
          f"{args.workers} simulated workers x {args.slots} slots in {min(args.procs, args.workers)} processes, "
          f"journal {journal}; actorsched from {os.path.dirname(actorsched.__file__)}", flush=True)

    extra = ["--no-journal"] if args.no_journal else []
    runs: list[RunResult] = []
    stats: dict[str, Any] = {}
    counters: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        names_path = None if args.no_thread_names else os.path.join(tmp, "threads")
        saved = {key: os.environ.get(key) for key in ("PYTHONPATH", THREAD_NAMES_ENV)}
        if names_path is not None:
            with open(os.path.join(tmp, "sitecustomize.py"), "w") as file:
                file.write(SITECUSTOMIZE)
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tmp, saved["PYTHONPATH"]) if p)
            os.environ[THREAD_NAMES_ENV] = names_path
        cluster = LocalCluster(workers=0, coordinator_args=extra)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        finally:  # only the coordinator gets the sitecustomize
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        try:
            assert cluster.coordinator is not None
            coordinator = psutil.Process(cluster.coordinator.pid)
            names = ThreadNames(coordinator.pid, names_path)
            sim_args = (args.slots, cluster.worker_endpoint, str(os.getpid()), args.timeout + 60)
            sims = Simulators(simulate, args.workers, args.procs, sim_args, "capacity-sim")
            try:
                with cluster.client(timeout_s=60) as client:
                    started = sims.expect("started", max(1.0, deadline - time.monotonic()))
                    sim_procs = [psutil.Process(r[2]) for r in started]
                    sims.tell("go")
                    sims.expect("registered", max(1.0, deadline - time.monotonic()))
                    cluster.wait_for_workers(client, args.workers, timeout_s=max(1.0, deadline - time.monotonic()))
                    me = psutil.Process()

                    def measure() -> Snapshot:
                        return snapshot(coordinator, me, sim_procs, names)

                    warm = [{"task_id": f"cap-warm-{time.time_ns()}-{i}", "name": "actorsched.tasks:noop"}
                            for i in range(500)]
                    client.gather(client.submit_many(warm), timeout=max(1.0, deadline - time.monotonic()))
                    client.purge(0.0)
                    for run in range(args.runs):
                        result = one_run(client, args.tasks, args.chunk, run, deadline, measure)
                        runs.append(result)
                        print(f"  run {run + 1}: {result.rate:,.0f} tasks/s ({result.wall_s:.1f} s); CPU per task: "
                              f"coordinator {result.coordinator_us:.0f} us, client {result.client_us:.0f} us, "
                              f"simulators {result.sims_us:.0f} us", flush=True)
                        client.purge(0.0)
                    stats = client.stats()
                sims.tell("stop")
                for _, _, proc_counters in sims.expect("counters", 30):
                    for key, value in proc_counters.items():
                        counters[key] = counters.get(key, 0) + value
            finally:
                sims.stop()
        finally:
            cluster.stop()

    rates = [r.rate for r in runs]
    spread = f"runs: {', '.join(f'{r:,.0f}' for r in rates)}"
    figure("throughput median", median(rates), "tasks/s", spread)
    for label, values in (("coordinator CPU per task", [r.coordinator_us for r in runs]),
                          ("client CPU per task", [r.client_us for r in runs]),
                          ("simulators CPU per task", [r.sims_us for r in runs])):
        figure(f"{label} (median)", median(values), "us", f"runs: {', '.join(f'{v:.0f}' for v in values)}")
    busy = [r.coordinator_us * r.rate / 1e6 for r in runs]
    figure("coordinator CPU utilisation (median)", median(busy), "cores", "CPU s per wall s; 2 cores here")
    total_tasks = args.tasks * len(runs)
    wall = sum(r.wall_s for r in runs)
    by_name: dict[str, float] = {}
    for r in runs:
        for tid, cpu in r.threads_s.items():
            by_name[names.name(tid)] = by_name.get(names.name(tid), 0.0) + cpu
    print(f"coordinator CPU by thread, all {len(runs)} run(s) together ({total_tasks} tasks, {wall:.1f} s):")
    for name, cpu in sorted(by_name.items(), key=lambda kv: -kv[1]):
        if cpu > 0:
            print(f"  {name:<40} {cpu * 1e6 / total_tasks:>8.1f} us/task {cpu / wall:>6.2f} cores", flush=True)
    transport = stats.get("transport", {})
    notes = {
        "simulator sends refused (HWM)": counters.get("send_again", 0),
        "Refused received": counters.get("refused", 0),
        "Reregister received": counters.get("reregister", 0),
        "CancelTasks received": counters.get("cancel_tasks", 0),
        "other messages": counters.get("other_messages", 0),
        "coordinator send_failed": transport.get("send_failed", 0),
        "coordinator bad worker frames": transport.get("bad_worker_frames", 0),
    }
    odd = {k: v for k, v in notes.items() if v}
    print(f"  assignments answered: {counters.get('assigned', 0)} in {counters.get('assign_messages', 0)} Assign "
          f"messages; heartbeats sent: {counters.get('heartbeats', 0)}; "
          + (", ".join(f"{k}: {v}" for k, v in odd.items()) if odd else "no refusals or losses"), flush=True)


if __name__ == "__main__":
    main()
