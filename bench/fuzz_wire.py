"""Wire fuzzing: hostile messages to a live coordinator while real tasks run, then a million decoder inputs.

Part 1, live (issue 9, "keep it tried").  A real coordinator (``bin/coordinator`` on
127.0.0.1 ephemeral ports, journal on) and ``--workers`` real workers are started with
:class:`~actorsched.localcluster.LocalCluster`.  A load thread submits ``--real-tasks``
``actorsched.tasks:echo`` tasks in batches over the whole run, each echoing its own
index.  Meanwhile raw ZeroMQ DEALER sockets send ``--messages`` hostile messages, split
over the two endpoints (clients' ROUTER and workers' ROUTER), in phases:

* ``garbage``: random bytes in 1..6 random frames;
* ``header``: a wrong or old protocol version, an unknown kind, a kind of the other
  endpoint, a frame too many or too few;
* ``structured``: msgpack bodies of each accepted kind with wrong types, wrong field
  counts, huge and negative ints, NaN/inf, ext types, non-str map keys, long strings;
* ``mutated``: valid bodies with bytes flipped, inserted, deleted or cut off;
* ``deep``: fields nested 90..1,100 levels deep (msgpack's own limit is 1,024), among
  them deep-argument ``Submit`` s that depend on a real unfinished task (issue 9 #1, #2);
* ``stale``: well-formed but stale or forged messages: results and started/released
  reports for real tasks with old epochs and attempts, results forged for the current
  attempt from a peer that does not hold it, heartbeats and goodbyes from unknown peers,
  fake registrations (also with out-of-range numbers), registrations claiming a live
  worker's id, re-submissions of real task ids with other arguments, queries naming one
  task a thousand times, watches, cancels and purges of unknown ids;
* ``huge``: ``--oversized`` bodies over ``max_message_bytes`` per endpoint and
  ``--many-frames`` messages of 200,000 empty frames.

After each phase the coordinator must still be running and answer ``stats``; the real
workers must still be running.  Printed: messages sent by phase, kind and endpoint, the
coordinator's replies to the fuzzers by kind, the coordinator's counters (``actorsched
stats``) before and after, its RSS before and after, liveness after each phase, and
every real task's outcome (all must succeed with their own value).  Tasks the fuzzers
managed to get accepted (``fz-*`` ids) are counted too.

Part 2, in process: ``--decoder-inputs`` inputs (default 1,000,000) through every
decoder (the four codecs, every record decoder, ``unpack_record``, ``peek_request_id``
when present); only a decoded value or ``ProtocolError`` may come out.  Printed: counts by
decoder and outcome, and the first input of every other exception.

Exit status 0 only if every check held.  Every loop is bounded by a count and by
``--time-limit``; every process started is stopped by PID (LocalCluster.stop) in ``finally``.

    .venv/bin/python bench/fuzz_wire.py --messages 20000 --decoder-inputs 200000
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import math
import os
import random
import sys
import threading
import time
import types
import typing
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgpack  # noqa: E402
import psutil  # noqa: E402
import zmq  # noqa: E402

from actorsched import protocol as p  # noqa: E402
from actorsched.client import Client  # noqa: E402
from actorsched.errors import ActorschedError, ProtocolError  # noqa: E402
from actorsched.localcluster import LocalCluster  # noqa: E402
from actorsched.recordcodec import record_decoder  # noqa: E402

PHASES = ("garbage", "header", "structured", "mutated", "deep", "stale", "huge")
WEIGHTS = {"garbage": 20, "header": 10, "structured": 30, "mutated": 20, "deep": 5, "stale": 15, "huge": 0}
ECHO = "actorsched.tasks:echo"
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def packb(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def nest(depth: int, kind: str = "list", leaf: Any = None) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


@functools.cache
def fields_of(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, type hint)`` of each field of record ``cls`` (get_type_hints is slow: once per class)."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def deep_bytes(depth: int) -> bytes:
    """A msgpack array nested ``depth`` levels, built by hand (the packer stops at 1,024)."""
    return b"\x91" * depth + b"\xc0"


# --------------------------------------------------------------------------- generators


class Gen:
    """Seeded generators of hostile frames ``[version, kind, body]`` (or any frame list)."""

    WRONG: list[Any] = [
        None, True, False, 0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63), 1.5, -0.0,
        float("nan"), float("inf"), float("-inf"), 1e308, "", "x", "\x00\uffff", "é" * 50, "x" * 5000,
        b"", b"\xff\xfe", [], [None], [[[]]], {}, {"k": None}, {1: 2}, {b"k": 1}, {None: 1},
        msgpack.ExtType(5, b"ext"), msgpack.Timestamp(1),
    ]

    def __init__(self, rng: random.Random, accepts: tuple[type[p.Message], ...],
                 endpoint: tuple[type[p.Message], ...] | None = None) -> None:
        """``accepts``: the kinds to generate; ``endpoint``: every kind the receiving codec accepts."""
        self.rng = rng
        self.accepts = accepts
        endpoint = endpoint or accepts
        self.others = [cls for cls in (*p.CLIENT_MESSAGES, *p.WORKER_MESSAGES, *p.TO_WORKER_MESSAGES,
                                       *p.TO_CLIENT_MESSAGES) if cls not in endpoint]
        self._valid_cache: dict[type, list[bytes]] = {}
        self._deep_cache: dict[bool, list[tuple[str, list[bytes]]]] = {}

    # -- values

    def wrong(self) -> Any:
        return self.rng.choice(self.WRONG)

    def right(self, hint: Any, depth: int = 0) -> Any:
        """A plausible value for ``hint`` (records as arrays)."""
        rng = self.rng
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(hint) if a is not type(None)]
            return None if rng.random() < 0.3 else self.right(members[0], depth)
        if hint is str:
            return rng.choice(["t-1", ECHO, "w-fuzz", "", "SUCCEEDED", f"fz-{rng.randrange(10**6)}"])
        if hint is bool:
            return rng.random() < 0.5
        if hint is int:
            return rng.choice([0, 1, 2, 7, rng.randrange(1000)])
        if hint is float:
            return rng.choice([0.0, 0.5, 1.0, 12.5])
        if hint is bytes:
            return rng.randbytes(rng.randrange(8))
        if hint is Any:
            return rng.choice([None, 1, "v", [1, 2], {"a": [1]}])
        if origin is dict:
            return {"k": rng.randrange(10)} if rng.random() < 0.5 else {}
        if origin is list:
            (item,) = typing.get_args(hint)
            return [self.right(item, depth + 1) for _ in range(rng.randrange(3 if depth < 3 else 1))]
        if dataclasses.is_dataclass(hint):
            return self.shaped(hint, depth + 1, wrong_p=0.0)
        return None

    def shaped(self, cls: type, depth: int = 0, wrong_p: float = 0.25) -> list[Any]:
        out = [self.wrong() if self.rng.random() < wrong_p else self.right(hint, depth)
               for _, hint in fields_of(cls)]
        roll = self.rng.random()
        if wrong_p and roll < 0.1 and out:
            del out[self.rng.randrange(len(out))]
        elif wrong_p and roll < 0.2:
            out.insert(self.rng.randrange(len(out) + 1), self.wrong())
        elif wrong_p and roll < 0.25:
            out = out[:self.rng.randrange(len(out) + 1)]
        return out

    def _pack_or_garbage(self, value: Any) -> bytes:
        try:
            return packb(value)
        except (ValueError, TypeError, OverflowError):
            return self.rng.randbytes(16)

    def valid_body(self, cls: type[p.Message]) -> bytes:
        cache = self._valid_cache.setdefault(cls, [])
        if len(cache) < 8:
            cache.append(self._pack_or_garbage(self.shaped(cls, wrong_p=0.0)))
        return self.rng.choice(cache)

    # -- messages

    def garbage(self) -> list[bytes]:
        rng = self.rng
        return [rng.randbytes(rng.choice([0, 1, 3, 8, 40, 300])) for _ in range(rng.randint(1, 6))]

    def header(self) -> list[bytes]:
        rng = self.rng
        cls = rng.choice(self.accepts)
        body = self.valid_body(cls)
        roll = rng.randrange(6)
        if roll == 0:
            return [rng.choice([b"AS1", b"AS2", b"AS3", b"as4", b"", b"AS4\x00", b"AS99"]), cls.KIND, body]
        if roll == 1:
            return [p.VERSION, rng.randbytes(rng.randrange(1, 40)), body]
        if roll == 2:
            other = rng.choice(self.others)
            return [p.VERSION, other.KIND, self.valid_body(other)]
        if roll == 3:
            return [p.VERSION, cls.KIND, body, b""]
        if roll == 4:
            return [p.VERSION, cls.KIND]
        return [p.VERSION]

    def structured(self) -> list[bytes]:
        cls = self.rng.choice(self.accepts)
        return [p.VERSION, cls.KIND, self._pack_or_garbage(self.shaped(cls))]

    def mutated(self) -> list[bytes]:
        rng = self.rng
        cls = rng.choice(self.accepts)
        buf = bytearray(self.valid_body(cls))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            at = rng.randrange(len(buf)) if buf else 0
            if op == 0 and buf:
                buf[at] ^= 1 << rng.randrange(8)
            elif op == 1 and buf:
                buf[at] = rng.choice([0x00, 0x7F, 0x90, 0xA0, 0xC0, 0xC1, 0xCF, 0xD4, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF])
            elif op == 2:
                buf[at:at] = rng.randbytes(rng.randint(1, 6))
            elif op == 3 and buf:
                del buf[at:at + rng.randint(1, 4)]
            else:
                del buf[at:]
        return [p.VERSION, cls.KIND, bytes(buf)]

    def deep(self, real_ids: list[str]) -> tuple[str, list[bytes]]:
        """A message with one field nested deep (cached: building a 1,000-level value is slow)."""
        key = len(real_ids) > 0
        cache = self._deep_cache.setdefault(key, [])
        if len(cache) < 256:
            cache.append(self._deep(real_ids))
        return self.rng.choice(cache)

    def _deep(self, real_ids: list[str]) -> tuple[str, list[bytes]]:
        rng = self.rng
        cls = rng.choice(self.accepts)
        depth = rng.choice([90, 99, 100, 101, 200, 500, 1000, 1020, 1023, 1024, 1025, 1100])
        if cls is p.Submit and real_ids and rng.random() < 0.5 and depth < 1020:
            # Issue 9 #2: a deep-argument task that depends on a real, maybe unfinished task.
            spec = [f"fz-deep-{rng.randrange(10**9)}", ECHO, [nest(depth)], {}, 0, [rng.choice(real_ids)],
                    None, None, [], [], ""]
            return "deep-submit-with-dep", [p.VERSION, cls.KIND, packb([rng.randrange(10**6), [spec], False])]
        array = self.shaped(cls, wrong_p=0.0)
        if not array:
            return "deep-raw", [p.VERSION, cls.KIND, deep_bytes(depth)]
        at = rng.randrange(len(array))
        array[at] = nest(depth, rng.choice(["list", "map"]))
        try:
            return "deep-field", [p.VERSION, cls.KIND, packb(array)]
        except ValueError:
            return "deep-raw", [p.VERSION, cls.KIND, deep_bytes(depth)]


class StaleWorker:
    """Well-formed but stale or forged messages to the worker endpoint."""

    def __init__(self, rng: random.Random, epoch: int, real_ids: Callable[[], list[str]],
                 live_worker_ids: list[str], steal: bool, shaped: Callable[[type], list[Any]]) -> None:
        self.rng = rng
        self.shaped = shaped
        self.epoch = epoch
        self.real_ids = real_ids
        self.live = live_worker_ids
        self.steal = steal
        self.registers = 0

    def next(self) -> tuple[str, list[bytes]]:
        rng = self.rng
        ids = self.real_ids() or ["t-none"]
        task = rng.choice(ids)
        roll = rng.randrange(100)
        if roll < 30:
            epoch, attempt = rng.choice([(self.epoch - 1, 1), (self.epoch, 99), (self.epoch + 5, 1), (0, 0)])
            outcome = p.TaskOutcome(task, max(0, epoch), attempt, True, "STALE", None, 0.01)
            return "results-stale", p.encode(p.Results([outcome]))
        if roll < 50:
            # The current fencing token from a peer that does not hold the attempt: a forgery.
            outcome = p.TaskOutcome(task, self.epoch, 1, True, "FORGED", None, 0.01)
            return "results-forged", p.encode(p.Results([outcome]))
        if roll < 60:
            return "started-stale", p.encode(p.Started([p.AttemptRef(task, self.epoch, rng.choice([1, 7]))]))
        if roll < 67:
            return "released-stale", p.encode(p.Released([p.AttemptRef(task, self.epoch, 1)]))
        if roll < 80:
            return "heartbeat-unknown", p.encode(p.Heartbeat(10.0, 20.0, [task]))
        if roll < 85:
            return "goodbye-unknown", p.encode(p.Goodbye("fuzz"))
        if roll < 88:
            return "draining-unknown", p.encode(p.Draining("fuzz"))
        if roll < 91:
            body = self.shaped(p.Register)  # wrong types and field counts, from a registrar socket
            try:
                return "register-structured", [p.VERSION, p.Register.KIND, packb(body)]
            except (ValueError, TypeError, OverflowError):
                return "register-structured", [p.VERSION, p.Register.KIND, b"\xc1"]
        if roll < 94:
            # Out-of-range numbers: Register(slots=2**64-1) (issue 9 #5), huge prefetch, pid 0.
            body = packb([f"fz-w{rng.randrange(10**6)}", "fuzzhost", rng.choice([0, 2**64 - 1, -1, 1]),
                          rng.choice([2**64 - 1, 2**31, 0, -5, 100000]), [], [], rng.choice([0, 2**40, -1])])
            return "register-out-of-range", [p.VERSION, p.Register.KIND, body]
        if roll < 97 and self.steal and self.live:
            # Issue 9 #6: a newcomer claiming a live, heartbeating worker's id.
            return "register-steal-live-id", p.encode(p.Register(rng.choice(self.live), "fuzzhost", 1, 1, [], []))
        self.registers += 1
        return "register-fake-valid", p.encode(p.Register(f"fz-w{rng.randrange(10**6)}", "fuzzhost", 1, 1, [], []))


class StaleClient:
    """Well-formed but stale, conflicting or amplifying requests to the client endpoint."""

    def __init__(self, rng: random.Random, real_ids: Callable[[], list[str]]) -> None:
        self.rng = rng
        self.real_ids = real_ids

    def next(self) -> tuple[str, list[bytes]]:
        rng = self.rng
        ids = self.real_ids() or ["t-none"]
        rid = rng.randrange(1, 10**6)
        roll = rng.randrange(100)
        if roll < 20:
            # Same id as a real task, other arguments: must be refused, the real task unchanged.
            spec = p.TaskSpec(rng.choice(ids), ECHO, ["HIJACKED"], {})
            return "resubmit-real-id", p.encode(p.Submit(rid, [spec]))
        if roll < 35:
            return "query-amplified", p.encode(p.Query(rid, [rng.choice(ids)] * 1000))
        if roll < 50:
            return "query-unknown", p.encode(p.Query(rid, [f"fz-none-{i}" for i in range(rng.randint(1, 50))]))
        if roll < 60:
            return "watch-real", p.encode(p.Watch(rid, rng.sample(ids, min(len(ids), 20))))
        if roll < 70:
            return "unwatch-unknown", p.encode(p.Unwatch(rid))
        if roll < 80:
            return "cancel-unknown", p.encode(p.Cancel(rid, [f"fz-none-{i}" for i in range(5)], True))
        if roll < 83:
            return "purge-nothing", p.encode(p.Purge(rid, 1e9))
        if roll < 85:
            return "purge-wrong-type", [p.VERSION, p.Purge.KIND, packb([rid, rng.choice(["0", None, [], -1.0])])]
        if roll < 92:
            return "get-stats", p.encode(p.GetStats(rid))
        if roll < 96:
            return "list-workers", p.encode(p.ListWorkers(rid))
        # A bad task in a batch (bad name, negative timeout, self-dependency): the batch is refused.
        bad = rng.choice([p.TaskSpec("fz-bad", "not a name", [], {}),
                          p.TaskSpec("fz-bad", ECHO, [], {}, timeout_s=-1.0),
                          p.TaskSpec("fz-self", ECHO, [], {}, deps=["fz-self"])])
        return "submit-invalid", p.encode(p.Submit(rid, [bad]))


# --------------------------------------------------------------------------- the live part


class RealLoad(threading.Thread):
    """Submits ``total`` echo tasks in batches, spread over ``spread_s``; then waits for all of them."""

    def __init__(self, endpoint: str, total: int, spread_s: float, seed: int, deadline: float) -> None:
        super().__init__(name="real-load", daemon=True)
        self.client = Client(endpoint, timeout_s=60)
        self.total = total
        self.spread_s = spread_s
        self.prefix = f"real-{seed}-{time.time_ns()}"
        self.deadline = deadline
        self.lock = threading.Lock()
        self.submitted: list[str] = []
        self.error: BaseException | None = None
        self.done_submitting = threading.Event()

    def ids(self) -> list[str]:
        with self.lock:
            return self.submitted[-200:]

    def expected(self, task_id: str) -> int:
        return int(task_id.rsplit("-", 1)[1])

    def run(self) -> None:
        try:
            batch = 50
            batches = max(1, math.ceil(self.total / batch))
            pause = self.spread_s / batches
            for b in range(batches):
                if time.monotonic() > self.deadline:
                    break
                specs = [{"task_id": f"{self.prefix}-{i}", "name": ECHO, "args": [i]}
                         for i in range(b * batch, min(self.total, (b + 1) * batch))]
                self.client.submit_many(specs)
                with self.lock:
                    self.submitted += [s["task_id"] for s in specs]
                time.sleep(pause)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.done_submitting.set()

    def outcomes(self, timeout_s: float) -> tuple[collections.Counter[str], list[tuple[str, str]]]:
        """Wait (bounded) for every submitted task to be final; counts by outcome and the bad ones."""
        ids = list(self.submitted)
        deadline = min(self.deadline, time.monotonic() + timeout_s)
        infos: list[p.TaskInfo] = []
        while True:
            infos = []
            for start in range(0, len(ids), 2000):
                infos += self.client.query_many(ids[start:start + 2000])
            if all(i.state in FINAL for i in infos) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        counts: collections.Counter[str] = collections.Counter()
        bad: list[tuple[str, str]] = []
        for info in infos:
            if info.state == "SUCCEEDED" and info.value == self.expected(info.task_id):
                counts["SUCCEEDED with its own value"] += 1
            elif info.state == "SUCCEEDED":
                counts["SUCCEEDED with a WRONG value"] += 1
                last = info.history[-1] if info.history else None
                bad.append(("wrong value", f"{info.task_id}: value {info.value!r:.60} attempt {info.attempt} "
                                           f"worker {info.worker_id!r} last attempt {last}"))
            else:
                counts[info.state] += 1
                bad.append((info.state, f"{info.task_id}: {info.error}"))
        counts["never submitted (load stopped early)"] = self.total - len(ids)
        return counts, bad


class Fuzzer:
    """DEALER sockets to one endpoint; sends frames, drains and counts the coordinator's replies."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, name: str, sockets: int = 4) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.name = name
        self.socks = [self._socket() for _ in range(sockets)]
        # Registrations go out on sockets of their own: a peer that registered holds assignments and may
        # report on them; the other sockets never register, so every result they send is a forgery.
        self.registrars = [self._socket() for _ in range(sockets)]
        self.sent: collections.Counter[str] = collections.Counter()
        self.replies: collections.Counter[str] = collections.Counter()
        self.send_timeouts = 0
        self._turn = 0

    def _socket(self) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(self.endpoint)
        return sock

    def send(self, kind: str, frames: list[bytes], sock: zmq.Socket[Any] | None = None) -> None:
        if sock is None:
            self._turn = (self._turn + 1) % len(self.socks)
            sock = (self.registrars if kind.startswith("register") else self.socks)[self._turn]
        try:
            sock.send_multipart(frames)
            self.sent[kind] += 1
        except zmq.Again:
            self.send_timeouts += 1
        if self.sent.total() % 200 == 0:
            self.drain()

    def send_alone(self, kind: str, frames: list[bytes]) -> None:
        """On a socket of its own, closed after: for messages that make ZeroMQ drop the connection."""
        sock = self._socket()
        try:
            time.sleep(0.05)
            self.send(kind, frames, sock)
            time.sleep(0.2)
        finally:
            sock.close(linger=0)

    def drain(self) -> None:
        for sock in (*self.socks, *self.registrars):
            for _ in range(10_000):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                kind = frames[1].decode(errors="replace") if len(frames) > 1 else "?"
                self.replies[kind] += 1

    def close(self) -> None:
        self.drain()
        for sock in (*self.socks, *self.registrars):
            sock.close(linger=0)


def rss_mb(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.Error:
        return float("nan")


def alive(cluster: LocalCluster, client: Client) -> tuple[bool, str]:
    assert cluster.coordinator is not None
    if cluster.coordinator.poll() is not None:
        return False, f"coordinator exited with {cluster.coordinator.returncode}"
    try:
        client.stats()
    except ActorschedError as exc:
        return False, f"coordinator does not answer stats: {exc}"
    dead = [proc.pid for proc in cluster.worker_procs if proc.poll() is not None]
    if dead:
        return True, f"coordinator up; real worker(s) exited: {dead}"
    return True, "coordinator up and answering; every real worker running"


def flat(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, name + "."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = value
    return out


def live(args: argparse.Namespace, deadline: float) -> bool:
    ok = True
    rng = random.Random(args.seed)
    with LocalCluster(workers=args.workers, slots=args.slots, coordinator_args=["--worker-timeout", "5"]) as cluster, \
            cluster.client(timeout_s=30) as client:
        assert cluster.coordinator is not None
        workers = cluster.wait_for_workers(client, args.workers, timeout_s=60)
        live_ids = [w.worker_id for w in workers]
        worker_pids = [proc.pid for proc in cluster.worker_procs]
        before = client.stats()
        rss_before = rss_mb(cluster.coordinator.pid)
        epoch = int(before["queue"].get("epoch", 1))
        print(f"live: coordinator pid {cluster.coordinator.pid}, workers {live_ids} (pids {worker_pids}), "
              f"epoch {epoch}; clients {cluster.client_endpoint}, workers {cluster.worker_endpoint}", flush=True)
        load = RealLoad(cluster.client_endpoint, args.real_tasks, args.spread_s, args.seed, deadline)
        load.start()
        ctx = zmq.Context()
        fz_client = Fuzzer(ctx, cluster.client_endpoint, "client")
        fz_worker = Fuzzer(ctx, cluster.worker_endpoint, "worker")
        # Purge is a legitimate request that forgets finished tasks, the real ones too: the generic
        # generators leave it out, the stale phase sends only purges that can forget nothing.
        client_kinds = tuple(cls for cls in p.CLIENT_MESSAGES if cls is not p.Purge)
        # Register likewise: only the stale phase sends it, from the registrar sockets.
        worker_kinds = tuple(cls for cls in p.WORKER_MESSAGES if cls is not p.Register)
        gens = {"client": Gen(rng, client_kinds, p.CLIENT_MESSAGES),
                "worker": Gen(rng, worker_kinds, p.WORKER_MESSAGES)}
        stale = {"client": StaleClient(rng, load.ids),
                 "worker": StaleWorker(rng, epoch, load.ids, live_ids, steal=not args.no_steal,
                                       shaped=Gen(rng, p.WORKER_MESSAGES).shaped)}
        fuzzers = {"client": fz_client, "worker": fz_worker}
        rounds = max(1, args.rounds)
        per_round = args.messages // rounds
        phases = [ph for ph in PHASES if ph in args.phases.split(",")]
        weights = {ph: WEIGHTS[ph] for ph in phases}
        per_phase = {ph: int(per_round * w / max(1, sum(weights.values()))) for ph, w in weights.items()}
        first = next((ph for ph in phases if weights[ph]), None)  # takes the remainder
        phase_rows: list[tuple[str, int, float, float, str]] = []
        try:
            for rnd, phase in ((r, ph) for r in range(rounds) for ph in phases):
                started = time.monotonic()
                count = per_phase[phase]
                if phase == first:  # the remainder, so that exactly --messages go out
                    count += (args.messages // rounds - sum(per_phase.values())) + (
                        args.messages % rounds if rnd == rounds - 1 else 0)
                sent = 0
                if phase == "huge":
                    size = int(before.get("limits", {}).get("max_message_bytes", p.DEFAULT_MAX_MESSAGE_BYTES)) + 1
                    for side, fz in fuzzers.items():
                        kind = p.Submit.KIND if side == "client" else p.Results.KIND
                        for _ in range(args.oversized):
                            if time.monotonic() > deadline:
                                break
                            fz.send_alone("oversized-body", [p.VERSION, kind, b"\x00" * size])
                            sent += 1
                        for _ in range(args.many_frames):
                            if time.monotonic() > deadline:
                                break
                            fz.send_alone("200000-empty-frames", [b""] * 200_000)
                            sent += 1
                else:
                    for i in range(count):
                        if time.monotonic() > deadline:
                            print(f"  time limit reached in phase {phase} after {i} messages", flush=True)
                            break
                        side = "client" if i % 2 == 0 else "worker"
                        gen, fz = gens[side], fuzzers[side]
                        if phase == "garbage":
                            fz.send("garbage", gen.garbage())
                        elif phase == "header":
                            fz.send("header", gen.header())
                        elif phase == "structured":
                            fz.send("structured", gen.structured())
                        elif phase == "mutated":
                            fz.send("mutated", gen.mutated())
                        elif phase == "deep":
                            fz.send(*gen.deep(load.ids()))
                        elif phase == "stale":
                            fz.send(*stale[side].next())
                        sent += 1
                for fz in fuzzers.values():
                    fz.drain()
                time.sleep(0.5)  # let the coordinator read what was sent before asking it
                up, how = alive(cluster, client)
                ok &= up and "exited" not in how
                row = (phase, sent, time.monotonic() - started, rss_mb(cluster.coordinator.pid), how)
                phase_rows.append(row)
                print(f"  round {rnd + 1} phase {phase:<10} sent {sent:>7}  {row[2]:6.1f} s  coordinator RSS "
                      f"{row[3]:7.1f} MB  -> {how}", flush=True)
                if not up:
                    break
            load.done_submitting.wait(max(0.0, deadline - time.monotonic()))
            for fz in fuzzers.values():
                fz.drain()
            try:
                counts, bad = load.outcomes(timeout_s=args.settle_s)
            except ActorschedError as exc:  # the coordinator is gone: nothing more can be learnt
                counts, bad = collections.Counter({"unknown (coordinator unreachable)": args.real_tasks}), []
                print(f"cannot query the real tasks: {exc}")
            if load.error is not None:
                ok = False
                print(f"real load stopped: {load.error!r}")
        finally:
            for fz in fuzzers.values():
                fz.close()
            ctx.term()
        up, how = alive(cluster, client)
        ok &= up
        after = client.stats() if up else {}
        rss_after = rss_mb(cluster.coordinator.pid)
        load.client.close()

        print("\nmessages sent, by endpoint and kind:")
        for side, fz in fuzzers.items():
            print(f"  {side} endpoint: {fz.sent.total():,} sent, {fz.send_timeouts} send timeouts")
            for kind, n in sorted(fz.sent.items(), key=lambda kv: -kv[1]):
                print(f"    {kind:<28} {n:>8,}")
        print("coordinator replies to the fuzzers, by kind:")
        for side, fz in fuzzers.items():
            print(f"  {side} endpoint: " + (", ".join(f"{k} {n:,}" for k, n in sorted(fz.replies.items()))
                                           or "none"))
        print("coordinator counters (stats) before -> after, those that changed:")
        fb, fa = flat(before), flat(after)
        for key in sorted(set(fb) | set(fa)):
            if fb.get(key) != fa.get(key):
                print(f"  {key:<40} {fb.get(key, 0):>12,.0f} -> {fa.get(key, 0):>12,.0f}")
        print(f"coordinator RSS: {rss_before:.1f} MB before, {rss_after:.1f} MB after "
              f"({rss_after - rss_before:+.1f} MB)")
        print(f"coordinator alive at the end: {how}")
        print(f"real tasks: {args.real_tasks} to submit")
        for state, n in counts.most_common():
            print(f"  {state:<40} {n:>7,}")
        shown: collections.Counter[str] = collections.Counter()
        for kind, line in bad:
            shown[kind] += 1
            if shown[kind] <= 5:
                print(f"  BAD ({kind}) {line}")
        accepted = fa.get("queue.submitted", 0) - fb.get("queue.submitted", 0) - len(load.submitted)
        print(f"fuzz tasks the coordinator accepted (submitted minus real): {accepted:,.0f}")
        all_good = counts["SUCCEEDED with its own value"] == args.real_tasks
        print(f"every real task succeeded with its own value: {'yes' if all_good else 'NO'}")
        ok &= all_good
    return ok


# --------------------------------------------------------------------------- the in-process part


def decoders(args: argparse.Namespace, deadline: float) -> bool:
    rng = random.Random(args.seed + 1)
    codecs = {name: (p.Codec(kinds), kinds) for name, kinds in (
        ("coordinator/clients", p.CLIENT_MESSAGES), ("coordinator/workers", p.WORKER_MESSAGES),
        ("worker", p.TO_WORKER_MESSAGES), ("client", p.TO_CLIENT_MESSAGES))}
    gens = {name: Gen(rng, kinds) for name, (_, kinds) in codecs.items()}
    records = [cls for cls in vars(p).values()
               if isinstance(cls, type) and dataclasses.is_dataclass(cls) and not issubclass(cls, p.Message)]
    peek = getattr(p, "peek_request_id", None)
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    escaped: dict[str, tuple[str, str]] = {}
    started = time.monotonic()
    done = 0
    def record(where: str, shown: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            value = fn(*args)
        except ProtocolError:
            outcomes[(where, "ProtocolError")] += 1
            return
        except Exception as exc:
            outcomes[(where, f"ESCAPED {type(exc).__name__}")] += 1
            escaped.setdefault(f"{where}: {type(exc).__name__}", (str(exc)[:120], shown))
            return
        outcomes[(where, "decoded" if value is not None else "None")] += 1

    def from_msgpack(cls: type, packed: bytes) -> Any:
        return record_decoder(cls)(msgpack.unpackb(packed, raw=False, strict_map_key=False))

    kinds = ("garbage", "header", "structured", "mutated", "deep", "valid")
    for done in range(1, args.decoder_inputs + 1):
        if done % 4096 == 0 and time.monotonic() > deadline:
            print(f"  time limit reached after {done - 1:,} decoder inputs", flush=True)
            done -= 1
            break
        name = rng.choice(list(codecs))
        codec, accepts = codecs[name]
        gen = gens[name]
        kind = rng.choice(kinds)
        if kind == "garbage":
            frames = gen.garbage()
        elif kind == "header":
            frames = gen.header()
        elif kind == "structured":
            frames = gen.structured()
        elif kind == "mutated":
            frames = gen.mutated()
        elif kind == "deep":
            frames = gen.deep([])[1]
        else:
            cls = rng.choice(accepts)
            frames = [p.VERSION, cls.KIND, gen.valid_body(cls)]
        shown = repr([f[:80] for f in frames])[:300]
        record(f"Codec({name})", shown, codec.decode, frames)
        roll = done % 8
        body = frames[2] if len(frames) == 3 else frames[-1]
        if roll == 0:
            spec_gen = gens["coordinator/clients"]
            blob = rng.choice([body, spec_gen._pack_or_garbage(spec_gen.shaped(p.TaskSpec)),
                               spec_gen._pack_or_garbage(spec_gen.shaped(p.TaskSpec, wrong_p=0.0))])
            if rng.random() < 0.3 and blob:
                cut = bytearray(blob)
                cut[rng.randrange(len(cut))] ^= 1 << rng.randrange(8)
                blob = bytes(cut[:rng.randrange(len(cut) + 1)]) if rng.random() < 0.3 else bytes(cut)
            record("unpack_record(TaskSpec)", repr(blob[:120]), p.unpack_record, p.TaskSpec, blob)
        elif roll == 1:
            cls = rng.choice(records)
            value = gen.shaped(cls) if rng.random() < 0.7 else gen.wrong()
            record(f"record_decoder({cls.__name__})", repr(value)[:300], from_msgpack, cls,
                   gen._pack_or_garbage(value))
        elif roll == 2 and peek is not None:
            record("peek_request_id", shown, peek, body)
    elapsed = time.monotonic() - started
    total = sum(outcomes.values())
    print(f"\nin-process decoders: {done:,} generated inputs, {total:,} decoder calls in {elapsed:.1f} s "
          f"({total / max(elapsed, 1e-9):,.0f} calls/s)")
    by_decoder: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (where, outcome), n in outcomes.items():
        by_decoder[where][outcome] += n
    for where in sorted(by_decoder):
        print(f"  {where:<40} " + ", ".join(f"{o} {n:,}" for o, n in sorted(by_decoder[where].items())))
    if escaped:
        print("exceptions other than ProtocolError (first input of each):")
        for key, (message, shown) in escaped.items():
            print(f"  {key}: {message}\n      input: {shown}")
    print(f"only a decoded value or ProtocolError came out: {'yes' if not escaped else 'NO'}")
    return not escaped and done >= args.decoder_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000, help="hostile messages to the live coordinator")
    parser.add_argument("--decoder-inputs", type=int, default=1_000_000, help="inputs for the in-process run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times every phase runs (messages split over them): is memory a plateau or a slope?")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {', '.join(PHASES)}")
    parser.add_argument("--real-tasks", type=int, default=2000, help="real echo tasks run during the fuzzing")
    parser.add_argument("--spread-s", type=float, default=30.0, help="seconds over which the real tasks are submitted")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--oversized", type=int, default=2, help="bodies over max_message_bytes, per endpoint")
    parser.add_argument("--many-frames", type=int, default=2, help="messages of 200,000 frames, per endpoint")
    parser.add_argument("--no-steal", action="store_true", help="do not claim live workers' ids (issue 9 #6)")
    parser.add_argument("--settle-s", type=float, default=120.0, help="wait at most this for real tasks to finish")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds for the live part")
    parser.add_argument("--decoder-time-limit", type=float, default=300.0, help="seconds for the in-process part")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--skip-decoders", action="store_true")
    args = parser.parse_args()
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    ok = True
    if not args.skip_live:
        ok &= live(args, time.monotonic() + args.time_limit)
    if not args.skip_decoders:
        ok &= decoders(args, time.monotonic() + args.decoder_time_limit)
    print(f"\nfuzz_wire: {'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
