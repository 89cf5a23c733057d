"""Tracing's parts without a cluster: the switch, the ``trace`` field and its bounds, the journal
layout of a spec, and the spans of each hook (client, coordinator, worker) in an in-memory exporter.

The same chain across real processes: ``tests/integration/test_tracing.py``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from test_worker_executor import drive

from actorsched import tracing
from actorsched.client import make_spec
from actorsched.config import TasksConfig
from actorsched.coordinator.task_queue import _pack_spec, _unpack_spec
from actorsched.core.commands import MakeReady
from actorsched.core.queue import TaskQueueCore
from actorsched.errors import InvalidTask, ProtocolError
from actorsched.protocol import Assignment, ErrorReply, SubmitReply, TaskSpec, pack_record, packer
from actorsched.worker.executor import Executor, Job

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
PARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


@pytest.fixture
def spans(memory_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    """Tracing on in this process, into memory (tests/conftest.py); off again afterwards."""
    return memory_spans


def finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    tracing.flush()
    return list(exporter.get_finished_spans())


def hexes(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# --------------------------------------------------------------------------- on or off


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": ""}, False),
    ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": " Console , none"}, True),
    ({"OTEL_TRACES_EXPORTER": "jsonl", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
])
def test_only_the_standard_variables_turn_tracing_on(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_tracing_is_off_in_the_test_process_and_the_hooks_do_nothing() -> None:
    assert not tracing.ENABLED
    spec = TaskSpec("t-1", "m:f")
    assert tracing.start_submits([spec]) == ([spec], [])
    tracing.end_submits([])
    tracing.placed(PARENT, "t-1", "m:f", 1, "w", 0, 1, 2)
    tracing.executed(PARENT, "t-1", "m:f", 1, 1, "w", True, "", "", 0.1, 2)
    tracing.flush()
    assert not tracing.ENABLED


def test_without_the_sdk_tracing_stays_off_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    monkeypatch.setattr(tracing, "ENABLED", True)  # as if OTEL_TRACES_EXPORTER asked for it
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    with caplog.at_level(logging.WARNING, "actorsched.tracing"):
        assert not tracing.setup("worker")
    assert not tracing.ENABLED
    assert "actorsched[otel]" in caplog.text


# --------------------------------------------------------------------------- the trace field


@pytest.mark.parametrize("trace", [
    "", PARENT, f"{PARENT} congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", f"00-{TRACE_ID}-{SPAN_ID}-00",
    f"{PARENT} " + "k=v," * 100,
])
def test_a_valid_trace(trace: str) -> None:
    assert TaskSpec.trace_problem(trace) == ""


@pytest.mark.parametrize("trace", [
    "garbage", PARENT.upper(), f"ff-{TRACE_ID}-{SPAN_ID}-01", f"00-{'0' * 32}-{SPAN_ID}-01",
    f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID}-{SPAN_ID}", f"{PARENT}\nx", f"{PARENT} caf\u00e9",
    f"{PARENT} " + "k" * TaskSpec.MAX_TRACE_CHARS, " " + PARENT,
])
def test_an_invalid_trace_is_named_with_its_limit(trace: str) -> None:
    assert "at most 512 characters" in TaskSpec.trace_problem(trace)


def test_trace_is_not_part_of_a_tasks_content() -> None:
    assert TaskSpec("t-1", "m:f", [1]) == TaskSpec("t-1", "m:f", [1], trace=PARENT)


def test_the_coordinator_refuses_a_bad_trace_and_keeps_a_good_one_to_the_assignment() -> None:
    core = TaskQueueCore(TasksConfig(), 1)
    (reply,) = core.submit(b"c", 1, [TaskSpec("bad", "m:f", trace="x" * 600)], 0.0)
    assert isinstance(reply.message, ErrorReply) and reply.message.code == "bad-request"  # type: ignore[attr-defined]
    assert "task 'bad': trace must be" in reply.message.message and "512" in reply.message.message  # type: ignore[attr-defined]
    assert "bad" not in core.tasks
    out = core.submit(b"c", 2, [TaskSpec("good", "m:f", trace=PARENT)], 0.0)
    (ready,) = [t for c in out if isinstance(c, MakeReady) for t in c.tasks]
    assert ready.trace == PARENT
    # A resubmit under a new trace is the same task (idempotent), and keeps the first trace.
    (again,) = core.submit(b"c", 3, [TaskSpec("good", "m:f", trace=f"00-{TRACE_ID}-{'1' * 16}-01")], 0.0)
    assert isinstance(again.message, SubmitReply)  # type: ignore[attr-defined]
    assert core.tasks["good"].spec.trace == PARENT


def test_an_assignment_carries_the_trace_last() -> None:
    assignment = Assignment("t-1", "m:f", [], {}, 1, 1, None, 0, False, PARENT)
    assert Assignment("t-1", "m:f", [], {}, 1, 1, None).trace == ""
    assert msgpack.unpackb(pack_record(assignment))[-1] == PARENT


def test_the_client_checks_a_given_trace_and_adds_none_when_off() -> None:
    assert make_spec({"name": "m:f"}).trace == ""
    assert make_spec({"name": "m:f", "trace": PARENT}).trace == PARENT
    assert make_spec(TaskSpec("t-1", "m:f", trace=PARENT)).trace == PARENT
    with pytest.raises(InvalidTask, match="trace must be"):
        make_spec({"name": "m:f", "trace": "nope"})
    with pytest.raises(InvalidTask, match="trace of task .* must be a str"):
        make_spec({"name": "m:f", "trace": 5})


# --------------------------------------------------------------------------- the journal


def test_an_untraced_spec_is_journaled_in_the_older_layout_and_both_layouts_read_back() -> None:
    pack = packer()
    untraced = TaskSpec("t-1", "m:f", [1], {"k": "v"}, 3, ["d"], 1.5, 2, ["E"], ["tag"])
    stored = _pack_spec(untraced, pack)
    assert msgpack.unpackb(stored) == msgpack.unpackb(pack_record(untraced))[:-1]  # ten fields: no trace
    assert _unpack_spec(stored) == untraced and _unpack_spec(stored).trace == ""
    traced = TaskSpec("t-2", "m:f", trace=PARENT)
    assert msgpack.unpackb(_pack_spec(traced, pack))[-1] == PARENT
    assert _unpack_spec(_pack_spec(traced, pack)).trace == PARENT
    assert _unpack_spec(pack_record(untraced)) == untraced  # the wire layout reads too
    for broken in (msgpack.packb(["t-1", "m:f"]), b"\xc1", msgpack.packb(msgpack.unpackb(stored)[:-1])):
        with pytest.raises(ProtocolError, match="TaskSpec"):
            _unpack_spec(broken)


# --------------------------------------------------------------------------- the hooks' spans


def test_each_submit_is_a_span_whose_context_travels_in_the_task(spans: InMemorySpanExporter) -> None:
    specs, open_spans = tracing.start_submits([TaskSpec("a", "m:f"), TaskSpec("b", "m:g")])
    tracing.end_submits(open_spans)
    first, second = finished(spans)
    assert [s.name for s in (first, second)] == ["submit", "submit"]
    assert first.parent is None and first.kind is SpanKind.PRODUCER
    assert first.attributes == {"actorsched.task_id": "a", "actorsched.task_name": "m:f"}
    assert first.resource.attributes["service.name"] == "actorsched-client"
    trace_id, span_id = hexes(first)
    assert specs[0].trace.startswith(f"00-{trace_id}-{span_id}-") and len(specs[0].trace) == 55
    assert hexes(second)[0] != trace_id  # a trace per task
    assert specs[1].trace.startswith(f"00-{hexes(second)[0]}-{hexes(second)[1]}")


def test_a_submit_is_a_child_of_the_applications_span_or_of_the_trace_it_came_with(
        spans: InMemorySpanExporter) -> None:
    app = TracerProvider().get_tracer("app")  # the application's own provider: not ours
    with app.start_as_current_span("request") as request:
        _, inside = tracing.start_submits([TaskSpec("a", "m:f")])
    tracing.end_submits(inside)
    _, given = tracing.start_submits([TaskSpec("b", "m:f", trace=PARENT + " k=v")])
    tracing.end_submits(given, RuntimeError("refused"))
    child, other = finished(spans)
    assert child.parent is not None and child.parent.span_id == request.get_span_context().span_id
    assert child.context.trace_id == request.get_span_context().trace_id
    assert hexes(other)[0] == TRACE_ID and f"{other.parent.span_id:016x}" == SPAN_ID  # type: ignore[union-attr]
    assert other.status.status_code is StatusCode.ERROR and "RuntimeError: refused" in str(other.status.description)


def test_a_placement_is_a_queue_wait_and_a_placement_span_under_the_submit(spans: InMemorySpanExporter) -> None:
    tracing.placed(PARENT, "t-1", "m:f", 2, "worker-1", -5, 1_000, 3_000)
    tracing.placed("not a trace", "t-2", "m:f", 1, "worker-1", 0, 1, 2)  # ignored, not an error
    wait, placement = finished(spans)
    assert (wait.name, wait.start_time, wait.end_time) == ("queue wait", 1_000, 3_000)
    assert (placement.name, placement.start_time, placement.end_time) == ("placement", 3_000, 3_000)
    for span in (wait, placement):
        assert hexes(span)[0] == TRACE_ID and f"{span.parent.span_id:016x}" == SPAN_ID  # type: ignore[union-attr]
        assert span.attributes is not None and span.attributes["actorsched.attempt"] == 2
    assert placement.attributes == {"actorsched.task_id": "t-1", "actorsched.task_name": "m:f",
                                    "actorsched.attempt": 2, "actorsched.worker_id": "worker-1",
                                    "actorsched.priority": -5}


def test_the_worker_times_each_traced_attempt_and_marks_failures(spans: InMemorySpanExporter) -> None:
    pool = Executor(1, worker_id="worker-7")
    pool.start()
    try:
        pool.submit(Job("ok", 7, 1, "actorsched.tasks:sleep", [0.05], {}, trace=PARENT))
        pool.submit(Job("bad", 7, 2, "actorsched.tasks:fail", ["boom"], {}, trace=PARENT))
        pool.submit(Job("plain", 7, 1, "actorsched.tasks:echo", [1], {}))  # untraced: no span
        before = time.time_ns()
        outcomes = drive(pool, lambda found: len(found) == 3)
        after = time.time_ns()
    finally:
        pool.stop()
    assert len(outcomes) == 3
    by_task = {s.attributes["actorsched.task_id"]: s for s in finished(spans)}  # type: ignore[index]
    assert set(by_task) == {"ok", "bad"}
    ok, bad = by_task["ok"], by_task["bad"]
    assert ok.name == "execute" and ok.kind is SpanKind.CONSUMER
    assert hexes(ok)[0] == TRACE_ID and f"{ok.parent.span_id:016x}" == SPAN_ID  # type: ignore[union-attr]
    assert ok.attributes is not None and bad.attributes is not None
    assert {k: ok.attributes[k] for k in ("actorsched.task_name", "actorsched.attempt", "actorsched.worker_id",
                                          "actorsched.outcome", "actorsched.epoch")} == {
        "actorsched.task_name": "actorsched.tasks:sleep", "actorsched.attempt": 1,
        "actorsched.worker_id": "worker-7", "actorsched.outcome": "succeeded", "actorsched.epoch": 7}
    assert ok.status.status_code is StatusCode.UNSET
    assert ok.start_time is not None and ok.end_time is not None
    assert before <= ok.start_time and ok.end_time <= after and ok.end_time - ok.start_time >= 40_000_000
    assert bad.attributes["actorsched.outcome"] == "failed" and bad.attributes["actorsched.attempt"] == 2
    assert bad.status.status_code is StatusCode.ERROR and "boom" in str(bad.status.description)
    assert [e.name for e in bad.events] == ["exception"]


# --------------------------------------------------------------------------- exporters from the environment


def test_console_spans_are_one_json_line_each_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-coordinator")
    monkeypatch.setattr(tracing, "ENABLED", tracing.wanted())
    try:
        assert tracing.setup("coordinator")
        tracing.placed(PARENT, "t-1", "m:f", 1, "w", 0, 1, 2)
        tracing.flush()
    finally:
        tracing.shutdown()
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["queue wait", "placement"]
    assert json.loads(lines[0])["resource"]["attributes"]["service.name"] == "my-coordinator"


def test_jsonl_spans_go_to_a_file_per_process_and_unknown_exporters_are_named(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl,zipkin")
    monkeypatch.setenv(tracing.JSONL_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setattr(tracing, "ENABLED", True)
    try:
        with caplog.at_level(logging.WARNING, "actorsched.tracing"):
            assert tracing.setup("worker")
        tracing.executed(PARENT, "t-1", "m:f", 1, 1, "w", False, "ValueError", "no", 0.25, 10**18)
    finally:
        tracing.shutdown()
    assert "'zipkin'" in caplog.text
    (path,) = tmp_path.iterdir()
    assert path.name.startswith("actorsched-worker-") and path.suffix == ".jsonl"
    (line,) = path.read_text().splitlines()
    span: dict[str, Any] = json.loads(line)
    assert (span["name"], span["status"]["status_code"], span["parent_id"]) == ("execute", "ERROR", f"0x{SPAN_ID}")


def test_no_usable_exporter_leaves_tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl")  # without its folder
    monkeypatch.delenv(tracing.JSONL_DIR_ENV, raising=False)
    monkeypatch.setattr(tracing, "ENABLED", True)
    assert not tracing.setup("client")
    assert not tracing.ENABLED
