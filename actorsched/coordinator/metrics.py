"""``/metrics``: the coordinator's figures in the Prometheus text format, by ``prometheus_client``.

The figures live where they are measured (the TaskQueue's core, the journal writer,
the transport's counters, the registry's worker list); the status page asks for a
snapshot and this module renders it through a one-shot collector, so the library
writes every HELP and TYPE line, groups each family's samples and escapes label
values.  Label cardinality is bounded: task names by the core (at most 50, then
``other``), workers by the registry's own limit on connected workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_QUEUE_COUNTERS = {
    "submitted": "Tasks accepted.",
    "retries": "Attempts scheduled again after a failure or a process death.",
    "requeued_lost": "Tasks requeued because their worker was lost.",
    "stale_outcomes": "Outcomes dropped because their attempt was no longer current.",
    "repeated_outcomes": "Outcomes of an attempt already committed, reported again (after a reconnection).",
    "rejected_batches": "Submit batches refused whole.",
    "purged": "Final tasks deleted by retention or purge.",
    "lost_assignments": "Assignments a worker did not hold and that queued again.",
    "taken_back": "Prefetched tasks a worker gave back unstarted.",
    "never_started": "Attempts taken back because their worker did not start them in time.",
    "quarantined": "Tasks failed at replay because their stored data could not be read.",
}


def render(snapshot: dict[str, Any], measured: dict[str, Any]) -> bytes:
    """The text a scrape gets, from the status page's ``snapshot`` and the queue's ``metrics`` ask."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(snapshot, measured))
    return generate_latest(registry)


class _Snapshot(Collector):
    def __init__(self, snapshot: dict[str, Any], measured: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.measured = measured

    def collect(self) -> Iterator[Metric]:
        queue = self.snapshot["queue"]
        tasks = GaugeMetricFamily("actorsched_tasks", "Tasks known to the coordinator, by state.", labels=["state"])
        for state, count in sorted(queue["states"].items()):
            tasks.add_metric([state], count)
        yield tasks
        yield GaugeMetricFamily("actorsched_tasks_in_memory", "Task records held in memory (unfinished, "
                                "and final ones not yet durable or still needed).", value=queue.get("in_memory", 0))
        yield GaugeMetricFamily("actorsched_pending_bytes", "Packed argument bytes of the unfinished tasks.",
                                value=queue.get("pending_bytes", 0))
        yield GaugeMetricFamily("actorsched_epoch", "The coordinator's epoch (one more per start, or per "
                                "takeover among standbys).", value=queue["epoch"])
        for name, text in _QUEUE_COUNTERS.items():
            yield CounterMetricFamily(f"actorsched_{name}", text, value=queue.get(name, 0))
        yield from self._workers()
        transport = CounterMetricFamily("actorsched_transport_events", "Transport events (messages, drops, "
                                        "refusals), by event.", labels=["event"])
        for event, value in sorted(self.snapshot["transport"].items()):
            transport.add_metric([event], value)
        yield transport
        yield from self._measured()

    def _workers(self) -> Iterator[Metric]:
        labels = ["worker", "state", "breaker"]
        families = {
            "running": GaugeMetricFamily("actorsched_worker_running", "Tasks a worker holds.", labels=labels),
            "slots": GaugeMetricFamily("actorsched_worker_slots", "A worker's slots.", labels=labels),
            "cpu_percent": GaugeMetricFamily("actorsched_worker_cpu_percent", "A worker host's CPU use.",
                                             labels=labels),
            "memory_percent": GaugeMetricFamily("actorsched_worker_memory_percent", "A worker host's memory use.",
                                                labels=labels),
            "load_score": GaugeMetricFamily("actorsched_worker_load_score", "A worker's placement score "
                                            "(lower gets the next task).", labels=labels),
        }
        for worker in self.snapshot["workers"]:
            values = [worker["worker_id"], worker["state"], worker["breaker"]]
            for field, family in families.items():
                family.add_metric(values, float(worker.get(field, 0.0)))
        yield from families.values()

    def _measured(self) -> Iterator[Metric]:
        measured = self.measured
        yield _histogram("actorsched_queue_wait_seconds", "Per attempt: from ready to placed on a worker.",
                         measured.get("queue_wait"))
        yield _histogram("actorsched_submit_to_result_seconds", "Per task: from submit to its final state.",
                         measured.get("latency"))
        yield _histogram("actorsched_journal_commit_seconds", "Per group commit of the journal.",
                         measured.get("journal_commit"))
        run = HistogramMetricFamily("actorsched_run_seconds", "Per outcome: the run time a worker reported, "
                                    "by task name.", labels=["name"])
        for name, histogram in sorted((measured.get("run_time") or {}).items()):
            run.add_metric([name], _buckets(histogram), histogram["sum"])
        yield run
        finished = CounterMetricFamily("actorsched_task_outcomes", "Final outcomes and retries, by task name.",
                                       labels=["name", "outcome"])
        for name, outcomes in sorted((measured.get("outcomes") or {}).items()):
            for outcome, count in sorted(outcomes.items()):
                finished.add_metric([name, outcome], count)
        yield finished


def _histogram(name: str, documentation: str, histogram: dict[str, Any] | None) -> HistogramMetricFamily:
    if histogram is None:
        return HistogramMetricFamily(name, documentation, buckets=[("+Inf", 0)], sum_value=0.0)
    return HistogramMetricFamily(name, documentation, buckets=_buckets(histogram), sum_value=histogram["sum"])


def _buckets(histogram: dict[str, Any]) -> list[tuple[str, float]]:
    return [("+Inf" if bound == float("inf") else repr(float(bound)), count) for bound, count in histogram["buckets"]]
