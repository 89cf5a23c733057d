"""Shared helpers for the benchmarks: percentiles, a figure printer, and waiting for many tasks."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def query_all(client: Any, ids: list[str]) -> list[Any]:
    """The TaskInfo of every id, asked 2,000 at a time."""
    infos: list[Any] = []
    for start in range(0, len(ids), 2000):
        infos += client.query_many(ids[start:start + 2000])
    return infos


def wait_final(client: Any, ids: list[str], timeout_s: float) -> list[Any]:
    """The TaskInfo of every id once all are final, or as they are after ``timeout_s`` (polled every 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        infos = query_all(client, ids)
        if all(i.state in FINAL for i in infos) or time.monotonic() > deadline:
            return infos
        time.sleep(0.5)  # polling the cluster's progress, bounded by timeout_s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def figure(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.3f} {unit:<8} {note}", flush=True)


class Simulators:
    """Simulator processes of a benchmark, each with a control pipe; ``stop()`` ends every one.

    ``target(index, count, *args, pipe)`` runs in process ``index`` and simulates ``count``
    of the ``workers``, spread evenly over at most ``procs`` processes.
    """

    def __init__(self, target: Callable[..., None], workers: int, procs: int, args: tuple[Any, ...],
                 name: str) -> None:
        mp = multiprocessing.get_context("spawn")  # the parent holds a zmq context: do not fork it
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        procs = max(1, min(procs, workers))
        try:
            for index in range(procs):
                count = workers // procs + (1 if index < workers % procs else 0)
                parent_end, child_end = mp.Pipe()
                proc = mp.Process(target=target, args=(index, count, *args, child_end), name=f"{name}-{index}",
                                  daemon=True)
                self.pipes.append(parent_end)
                proc.start()
                child_end.close()
                self.procs.append(proc)
        except BaseException:
            self.stop()
            raise

    def expect(self, kind: str, timeout_s: float) -> list[tuple[Any, ...]]:
        """One message of ``kind`` from every simulator, within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        replies: list[tuple[Any, ...]] = []
        for proc, pipe in zip(self.procs, self.pipes):
            while not pipe.poll(0.1):
                if not proc.is_alive():
                    raise RuntimeError(f"simulator {proc.name} exited with {proc.exitcode} before {kind!r}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no {kind!r} from simulator {proc.name} within {timeout_s:.0f} s")
            try:
                reply = pipe.recv()
            except EOFError:
                proc.join(1)
                raise RuntimeError(f"simulator {proc.name} exited with {proc.exitcode} before {kind!r}") from None
            if reply[0] != kind:
                raise RuntimeError(f"simulator {proc.name} sent {reply[0]!r}, expected {kind!r}")
            replies.append(reply)
        return replies

    def tell(self, command: str) -> None:
        for pipe in self.pipes:
            pipe.send(command)

    def stop(self) -> None:
        """End every simulator: ask, then SIGTERM, then SIGKILL (each by its own PID)."""
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for pipe in self.pipes:
            pipe.close()
