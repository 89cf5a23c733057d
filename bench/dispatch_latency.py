"""Dispatch latency: time from a task being accepted to its assignment reaching a worker.

One real coordinator (journal on, fsync on) and N simulated workers: real ZeroMQ DEALER
peers speaking the wire protocol, spread over a few processes, one ``zmq.Poller`` each.
Every simulated worker registers with ``ceil(tasks / N)`` slots, so all tasks can be
placed at once (this measures dispatch, not queueing), heartbeats every
``heartbeat_interval_s`` and answers each ``Assign`` at once with ok ``Results``.

The client submits the tasks in chunks; a task's *accepted* time is when the
``submit_many`` call of its chunk returned (the coordinator's acknowledgement: the task
is durable).  Its *arrival* time is when a simulator received the ``Assign`` naming it.
Both are CLOCK_MONOTONIC, which is system-wide on Linux, so they compare across
processes.  The coordinator places a task as soon as it accepts it, while the journal
commit that the acknowledgement waits for is still running, so an assignment usually
reaches a worker before the client hears the acknowledgement; such negative latencies
count as 0 and are counted, and *submit sent -> assigned* is the figure to read.  Everything (coordinator, simulators,
client) shares this machine's CPUs.  Prints figures; it is not a pass/fail test.

Start-up is timed in two phases: every simulator first connects all its sockets and
waits for each ZMTP handshake (``connect``), then all send ``Register`` at once
(``registration``, until the last ``Welcome``).  ``--log-dir`` keeps the coordinator's log.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Simulators, figure, percentile  # noqa: E402

from actorsched.localcluster import LocalCluster  # noqa: E402
from actorsched.protocol import (  # noqa: E402
    TO_WORKER_MESSAGES,
    Assign,
    Codec,
    Heartbeat,
    Refused,
    Register,
    Results,
    TaskOutcome,
    Welcome,
    encode,
)

SIM_LIFETIME_S = 300.0  # a simulator exits by itself after this, whatever happens to its parent


# --------------------------------------------------------------------------- simulator (child process)


def simulate(proc: int, count: int, slots: int, endpoint: str, tag: str, conn: Connection) -> None:
    """Own ``count`` DEALER sockets; register them on "go"; answer Assigns; report on "stop"."""
    codec = Codec(TO_WORKER_MESSAGES)
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, 3 * count + 64)  # a DEALER has a monitor (2 PAIRs) while connecting
    sockets: list[zmq.Socket[bytes]] = []
    index: dict[Any, int] = {}
    host = socket.gethostname()
    pid = os.getpid()
    arrivals: dict[str, float] = {}
    counters = {"assign_messages": 0, "assigned": 0, "duplicates": 0, "max_per_assign": 0, "heartbeats": 0,
                "refused": 0, "other_messages": 0, "send_again": 0}
    try:
        conn.send(("started", proc))
        if conn.recv() != "connect":
            return
        # Phase 1: connect every socket and wait until each finished its ZMTP handshake,
        # so that the registration figure below does not include connection set-up.
        monitors: dict[Any, int] = {}
        for i in range(count):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.ROUTING_ID, f"sim-{tag}-{proc}-{i}".encode())
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            monitors[sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)] = i
            sock.connect(endpoint)
            index[sock] = i
            sockets.append(sock)
        connecting = zmq.Poller()
        for monitor in monitors:
            connecting.register(monitor, zmq.POLLIN)
        pending = set(monitors)
        give_up = time.monotonic() + 60
        while pending and time.monotonic() < give_up:
            for monitor, _event in connecting.poll(100):
                if parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    pending.discard(monitor)
                    connecting.unregister(monitor)
        connected = time.monotonic()
        for monitor, i in monitors.items():
            sockets[i].disable_monitor()
            monitor.close(linger=0)
        conn.send(("connected", proc, connected, count - len(pending)))
        if conn.recv() != "go":
            return

        def send(sock: zmq.Socket[bytes], frames: list[bytes]) -> None:
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                counters["send_again"] += 1

        register_sent = time.monotonic()
        for i, sock in enumerate(sockets):
            send(sock, encode(Register(f"sim-{proc}-{i}", host, pid, slots, [], [])))
        welcomed = [False] * count
        n_welcomed = 0
        last_welcome = 0.0
        heartbeat_s = 1.0
        next_heartbeat = [math.inf] * count
        heartbeat = encode(Heartbeat(1.0, 1.0, []))
        next_sweep = 0.0
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock, zmq.POLLIN)
        control = conn.fileno()
        poller.register(control, zmq.POLLIN)
        deadline = register_sent + SIM_LIFETIME_S
        while time.monotonic() < deadline:
            for item, _event in poller.poll(100):
                if item == control:
                    try:
                        command = conn.recv()
                    except EOFError:
                        return
                    if command == "stop":
                        conn.send(("arrivals", proc, arrivals, counters))
                        return
                    continue
                i = index[item]
                sock = sockets[i]
                for _ in range(1000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    now = time.monotonic()
                    message = codec.decode(frames)
                    if isinstance(message, Assign):
                        items = message.assignments
                        counters["assign_messages"] += 1
                        counters["assigned"] += len(items)
                        counters["max_per_assign"] = max(counters["max_per_assign"], len(items))
                        for a in items:
                            if a.task_id in arrivals:
                                counters["duplicates"] += 1
                            else:
                                arrivals[a.task_id] = now
                        send(sock, encode(Results([
                            TaskOutcome(a.task_id, a.epoch, a.attempt, True, None, None, 0.0) for a in items
                        ])))
                    elif isinstance(message, Welcome):
                        if message.heartbeat_interval_s > 0:
                            heartbeat_s = message.heartbeat_interval_s
                        next_heartbeat[i] = now + heartbeat_s
                        if not welcomed[i]:
                            welcomed[i] = True
                            n_welcomed += 1
                            last_welcome = now
                            if n_welcomed == count:
                                conn.send(("registered", proc, register_sent, last_welcome))
                    elif isinstance(message, Refused):
                        counters["refused"] += 1
                    else:
                        counters["other_messages"] += 1
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 0.1
                for i, due in enumerate(next_heartbeat):
                    if now >= due:
                        send(sockets[i], heartbeat)
                        counters["heartbeats"] += 1
                        next_heartbeat[i] = now + heartbeat_s
    finally:
        for sock in sockets:
            sock.close(linger=0)
        context.term()


# --------------------------------------------------------------------------- parent


def scenario(workers: int, tasks: int, procs: int, chunk: int, timeout_s: float, log_dir: str | None) -> None:
    slots = math.ceil(tasks / workers)
    print(f"dispatch latency: {workers} simulated workers x {slots} slots in {min(procs, workers)} processes, "
          f"{tasks} no-op tasks in submits of {chunk}, journal on", flush=True)
    if log_dir is not None:
        log_dir = os.path.join(log_dir, f"workers-{workers}")
    with LocalCluster(workers=0, log_dir=log_dir) as cluster, cluster.client(timeout_s=30) as client:
        sims = Simulators(simulate, workers, procs, (slots, cluster.worker_endpoint, f"{workers}-{os.getpid()}"),
                          "sim")
        try:
            sims.expect("started", timeout_s)
            connect = time.monotonic()
            sims.tell("connect")
            connected = sims.expect("connected", timeout_s)
            all_connected = max(r[2] for r in connected)
            handshakes = sum(r[3] for r in connected)
            if handshakes < workers:
                print(f"  only {handshakes} of {workers} sockets completed the handshake within 60 s", flush=True)
            go = time.monotonic()
            sims.tell("go")
            registered = sims.expect("registered", timeout_s)
            all_welcomed = max(r[3] for r in registered)
            cluster.wait_for_workers(client, workers, timeout_s=timeout_s)
            listed = time.monotonic()

            run = f"dl-{workers}-{time.time_ns()}"
            specs = [{"task_id": f"{run}-{i}", "name": "actorsched.tasks:noop"} for i in range(tasks)]
            sent: dict[str, float] = {}
            accepted: dict[str, float] = {}
            handles = []
            chunks: list[list[str]] = []
            first_submit = time.monotonic()
            for start in range(0, tasks, chunk):
                part = specs[start:start + chunk]
                chunks.append([spec["task_id"] for spec in part])
                before = time.monotonic()
                handles += client.submit_many(part)
                after = time.monotonic()
                for spec in part:
                    sent[spec["task_id"]] = before
                    accepted[spec["task_id"]] = after
            last_ack = time.monotonic()
            client.gather(handles, timeout=timeout_s)
            drained = time.monotonic()
            stats = client.stats()

            sims.tell("stop")
            reports = sims.expect("arrivals", timeout_s)
        finally:
            sims.stop()

    arrivals: dict[str, float] = {}
    counters: dict[str, int] = {}
    for _, _, proc_arrivals, proc_counters in reports:
        arrivals.update(proc_arrivals)
        for key, value in proc_counters.items():
            counters[key] = max(counters.get(key, 0), value) if key == "max_per_assign" \
                else counters.get(key, 0) + value
    missing = [t for t in accepted if t not in arrivals]
    raw = [(arrivals[t] - accepted[t]) * 1000 for t in accepted if t in arrivals]
    negative = sum(1 for v in raw if v < 0)
    latency = [max(0.0, v) for v in raw]
    from_send = [(arrivals[t] - sent[t]) * 1000 for t in sent if t in arrivals]

    figure("connect (TCP + ZMTP handshake, all sockets)", all_connected - connect, "s", f"{workers} DEALERs at once")
    figure("registration (go -> last Welcome)", all_welcomed - go, "s", f"{workers} Registers at once")
    figure("registration (go -> ListWorkers shows all)", listed - go, "s")
    figure("submit (first submit -> last ack)", last_ack - first_submit, "s")
    figure("drain (first submit -> all SUCCEEDED seen)", drained - first_submit, "s",
           f"{tasks / (drained - first_submit):,.0f} tasks/s")
    figure("last assignment arrival after first submit", max(arrivals.values()) - first_submit, "s")
    figure("accepted -> assigned p50", percentile(latency, 50), "ms")
    figure("accepted -> assigned p99", percentile(latency, 99), "ms")
    figure("accepted -> assigned max", max(latency), "ms",
           f"{negative} of {len(raw)} arrived before the ack (counted as 0)")
    figure("submit sent -> assigned p50", percentile(from_send, 50), "ms", "includes the journal fsync")
    figure("submit sent -> assigned p99", percentile(from_send, 99), "ms")
    spreads = [(max(arrivals[t] for t in ids) - min(arrivals[t] for t in ids)) * 1000
               for ids in chunks if all(t in arrivals for t in ids)]
    figure("arrival spread within one submit, median", percentile(spreads, 50), "ms",
           f"first to last assignment of the same {chunk} tasks; max {max(spreads, default=0):.1f} ms")
    figure("tasks per Assign message (mean)", counters["assigned"] / max(1, counters["assign_messages"]), "tasks",
           f"max {counters['max_per_assign']}, {counters['assign_messages']} Assign messages")
    transport = stats.get("transport", {})
    notes = {
        "missing assignments": len(missing),
        "duplicate assignments": counters["duplicates"],
        "simulator sends refused (HWM)": counters["send_again"],
        "Refused received": counters["refused"],
        "coordinator send_failed": transport.get("send_failed", 0),
        "coordinator bad worker frames": transport.get("bad_worker_frames", 0),
    }
    odd = {k: v for k, v in notes.items() if v}
    print(f"  heartbeats sent: {counters['heartbeats']}; "
          + (", ".join(f"{k}: {v}" for k, v in odd.items()) if odd else "no losses, duplicates or refusals"),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4, help="simulator processes per scenario")
    parser.add_argument("--chunk", type=int, default=500, help="tasks per submit_many call (client max 1000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait of a scenario, s")
    parser.add_argument("--log-dir", help="keep the coordinator's log here (default: a temporary directory)")
    args = parser.parse_args()
    for workers in args.workers:
        scenario(workers, args.tasks, args.procs, args.chunk, args.timeout, args.log_dir)


if __name__ == "__main__":
    main()
