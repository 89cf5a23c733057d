"""OpenTelemetry tracing of a task across processes: opt-in, and free when off.

Theory of operation
-------------------
One trace per task, whatever process a step runs in::

    submit (client, root or a child of the application's active span)
    ├── queue wait   (coordinator: the attempt ready to place -> placed; one per attempt)
    ├── placement    (coordinator: the moment of placement; worker id, attempt)
    └── execute      (worker: one per attempt; outcome, error status on failure)

The context travels *in the task*: :func:`start_submits` opens a ``submit`` span per task
and writes its context into ``TaskSpec.trace`` (a W3C ``traceparent``, then a space and
the ``tracestate`` when there is one).  The spec is journaled with it, so the trace
survives a coordinator restart; the coordinator hands it to the worker in
``Assignment.trace``.  The coordinator and the worker do not keep spans open: they
create each span once its end is known, with explicit start and end times (wall-clock
nanoseconds from the monotonic times they already keep), so nothing is held per task.
The worker's ``execute`` span is made in the worker's own process, not in the child
that ran the task: its times are the end of the attempt as the worker saw it and the
child's measured run time.  One attempt, one ``queue wait``, ``placement`` and
``execute`` each (a retry has its own three); the ``submit`` span ends once the task is
acknowledged (durable), not when it has run.  ``placement`` is stamped when the
TaskQueue records the Dispatcher's choice, which may be a little after the assignment
left for the worker: under load the worker's ``execute`` can begin a moment before it.

On or off
---------
This is the only module that imports OpenTelemetry, and only when tracing is on.
:data:`ENABLED` is read from the environment once, at import, without importing
anything: tracing is wanted when ``OTEL_TRACES_EXPORTER`` names an exporter other than
``none`` and ``OTEL_SDK_DISABLED`` is not ``true``.  (The SDK's own default exporter is
``otlp``; here an unset variable means off, so nobody pays for tracing unasked.)  The
first hook that runs (or the process's start, for the coordinator's TaskQueue and the
worker's executor) calls :func:`setup`, which imports the SDK; if it cannot (the ``otel``
extra is not installed) it logs one warning and :data:`ENABLED` becomes False.  Every
hook in the rest of the code is behind ``if tracing.ENABLED`` or an empty
``trace`` (``TaskSpec.trace`` stays "" when the client does not trace), so off costs an
attribute test per batch or task, and the wire and journal carry nothing but an empty
string (the journal not even that: see ``coordinator.task_queue``).

Exporters, from ``OTEL_TRACES_EXPORTER`` (a comma-separated list):

* ``otlp``: OTLP over HTTP/protobuf (``opentelemetry-exporter-otlp-proto-http``), which
  reads ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
  ``..._HEADERS``, ``..._TIMEOUT`` and the rest itself.  Only ``http/protobuf`` is
  supported; another ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` is named in a warning.
* ``console``: the SDK's ``ConsoleSpanExporter``, one JSON object per span and line, on
  **stderr**: a coordinator's stdout carries its ``coordinator ready`` line to whoever
  started it (``LocalCluster`` reads it from a pipe it never drains again, so spans there
  would fill the pipe and stop the coordinator), and the CLI's stdout is its output.
* ``jsonl``: the same JSON lines, to the file ``<service name>-<pid>.jsonl`` in the
  folder ``ACTORSCHED_OTEL_JSONL_DIR`` (one file per process, so processes never
  interleave their lines).  For tests and offline looks without a collector: the
  integration test reads every process's spans back from these files, exact and
  attributed, which neither a console nor a collector would give it.

``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) names the
service; the default is ``actorsched-client``, ``actorsched-coordinator`` or
``actorsched-worker``.  Spans are batched (``BatchSpanProcessor``, tuned by the
standard ``OTEL_BSP_*`` variables) and flushed when the process ends: the coordinator's
TaskQueue and the worker's executor flush when they stop, and the provider shuts down
at interpreter exit (the SDK's ``atexit`` hook), which covers the client too.  A process
killed with SIGKILL loses the spans it had not exported.

actorsched never sets OpenTelemetry's global tracer provider (an application's own is
left alone): it keeps its own, so a test can also install one with any exporter
(``setup(kind, exporters=[InMemorySpanExporter()])``) and take it down again
(:func:`shutdown`).  The parent of a ``submit`` span is the current context, so a submit
inside an application's span is its child, whoever provides that span.

Attributes: ``actorsched.task_id``, ``actorsched.task_name``, ``actorsched.attempt``,
``actorsched.worker_id``, ``actorsched.priority`` (placement), ``actorsched.epoch``,
``actorsched.outcome`` (``succeeded`` or ``failed``), ``actorsched.error_type`` and
``actorsched.duration_s`` (the child's measured run time) on ``execute``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actorsched.protocol import TaskSpec

log = logging.getLogger(__name__)

EXPORTERS_ENV = "OTEL_TRACES_EXPORTER"
DISABLED_ENV = "OTEL_SDK_DISABLED"
JSONL_DIR_ENV = "ACTORSCHED_OTEL_JSONL_DIR"
"""The folder of the ``jsonl`` exporter's files (``<service name>-<pid>.jsonl``)."""
EXPORTERS = ("otlp", "console", "jsonl")
"""The exporters ``OTEL_TRACES_EXPORTER`` may name (and ``none``)."""
KINDS = ("client", "coordinator", "worker")
FLUSH_TIMEOUT_S = 5.0

TASK_ID = "actorsched.task_id"
TASK_NAME = "actorsched.task_name"
ATTEMPT = "actorsched.attempt"
WORKER_ID = "actorsched.worker_id"
PRIORITY = "actorsched.priority"
EPOCH = "actorsched.epoch"
OUTCOME = "actorsched.outcome"
ERROR_TYPE = "actorsched.error_type"
DURATION_S = "actorsched.duration_s"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard environment variables ask for traces (nothing is imported to know)."""
    if environ.get(DISABLED_ENV, "").strip().lower() == "true":
        return False
    return any(name.strip().lower() not in ("", "none") for name in environ.get(EXPORTERS_ENV, "").split(","))


ENABLED: bool = wanted()
"""Tracing is on in this process: read every hook's ``if tracing.ENABLED`` as "costs nothing when False"."""

_lock = threading.Lock()
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider, once set up
_tracer: Any = None
_propagator: Any = None
_otel: Any = None  # the opentelemetry.trace module (SpanKind, Status...), once set up


def setup(kind: str, exporters: Sequence[Any] | None = None) -> bool:
    """Start tracing in this process as ``kind`` (client, coordinator, worker); whether it is on.

    Idempotent: the first call builds the provider, later ones return True.  With
    ``exporters`` (SDK span exporters, an in-memory one in tests) those are used and the
    environment is not asked; without, the exporters ``OTEL_TRACES_EXPORTER`` names.
    Tracing stays off (and :data:`ENABLED` becomes False) when the SDK cannot be
    imported or no exporter could be made; each reason is logged once, as a warning.
    """
    global ENABLED, _provider, _tracer, _propagator, _otel
    with _lock:
        if _provider is not None:
            return True
        if exporters is None and not ENABLED:
            return False
        try:
            from opentelemetry import trace as otel_trace
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            log.warning("%s=%s asks for traces, but the OpenTelemetry SDK cannot be imported (%s): tracing is "
                        "off; install it with pip install 'actorsched[otel]'",
                        EXPORTERS_ENV, os.environ.get(EXPORTERS_ENV, ""), exc)
            ENABLED = False
            return False
        resource = Resource.create({})  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, if set
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: f"actorsched-{kind}"}))
        service = str(resource.attributes.get(SERVICE_NAME))
        chosen = list(exporters) if exporters is not None else _exporters_from_env(service)
        if not chosen:
            ENABLED = False
            return False
        provider = TracerProvider(resource=resource)  # shuts down (so flushes) at interpreter exit
        for exporter in chosen:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        _provider, _otel = provider, otel_trace
        _tracer = provider.get_tracer("actorsched")
        _propagator = TraceContextTextMapPropagator()
        ENABLED = True
    log.info("tracing on service=%s exporters=%s", service, ",".join(type(e).__name__ for e in chosen))
    return True


def _exporters_from_env(service: str) -> list[Any]:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names; a warning for each one that cannot be made."""
    names = [name.strip().lower() for name in os.environ.get(EXPORTERS_ENV, "").split(",")]
    chosen: list[Any] = []
    for name in dict.fromkeys(n for n in names if n not in ("", "none")):
        try:
            if name == "otlp":
                protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
                if protocol.strip() != "http/protobuf":
                    log.warning("OTLP protocol %r is not supported here: spans go as http/protobuf (the port is "
                                "usually 4318)", protocol)
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                chosen.append(OTLPSpanExporter())
            elif name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                chosen.append(ConsoleSpanExporter(service_name=service, out=sys.stderr, formatter=_json_line))
            elif name == "jsonl":
                folder = os.environ.get(JSONL_DIR_ENV, "")
                if not folder:
                    log.warning("%s=jsonl needs the folder to write to in %s; no spans are written there",
                                EXPORTERS_ENV, JSONL_DIR_ENV)
                    continue
                chosen.append(_jsonl_exporter(os.path.join(folder, f"{service}-{os.getpid()}.jsonl")))
            else:
                log.warning("%s names the exporter %r, which actorsched does not know (it knows %s, none); "
                            "it is ignored", EXPORTERS_ENV, name, ", ".join(EXPORTERS))
        except Exception as exc:  # an exporter that cannot be made (a missing package, a bad folder)
            log.warning("trace exporter %r cannot be used: %s: %s", name, type(exc).__name__, exc)
    return chosen


def _json_line(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _jsonl_exporter(path: str) -> Any:
    """A span exporter appending one JSON object per span and line (the console exporter's JSON) to ``path``."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):  # type: ignore[misc]  # the SDK is not typed for mypy here
        def __init__(self) -> None:
            self.path = path
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by shutdown
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> Any:
            with self._lock:
                if self._file.closed:
                    return SpanExportResult.FAILURE
                self._file.write("".join(_json_line(span) for span in spans))
                self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                self._file.close()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return JsonLinesExporter()


def flush(timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Export every span ended so far (waits at most ``timeout_s``); nothing when tracing is off."""
    provider = _provider
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and take the provider down; tracing is off in this process until :func:`setup` runs again."""
    global ENABLED, _provider, _tracer
    with _lock:
        provider, _provider, _tracer = _provider, None, None
        ENABLED = False
    if provider is not None:
        provider.shutdown()


def _tracer_for(kind: str) -> Any:
    tracer = _tracer
    if tracer is None and setup(kind):
        tracer = _tracer
    return tracer


# --------------------------------------------------------------------------- the trace field


def trace_of(context: Any) -> str:
    """``TaskSpec.trace`` for an OpenTelemetry context: its traceparent, and its tracestate if that fits."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    parent, state = carrier.get("traceparent", ""), carrier.get("tracestate", "")
    if state and len(parent) + 1 + len(state) <= TaskSpec.MAX_TRACE_CHARS:
        return f"{parent} {state}"
    return parent  # a tracestate may be dropped (W3C): the trace does not depend on it


def context_of(trace: str) -> Any:
    """The OpenTelemetry context ``trace`` names, or None if it is "" or not one (see ``TaskSpec.trace``)."""
    if not trace or TaskSpec.trace_problem(trace):
        return None
    parent, _, state = trace.partition(" ")
    carrier = {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}
    context = _propagator.extract(carrier)
    span_context = _otel.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


# --------------------------------------------------------------------------- the client


def start_submits(specs: list[TaskSpec]) -> tuple[list[TaskSpec], list[Any]]:
    """Open a ``submit`` span per task and put its context in the task's ``trace``: (specs, spans).

    A span's parent is the task's own ``trace`` if it came with one (a context from
    elsewhere), else the current context (the application's active span, if any).  Pass
    the spans to :func:`end_submits` once the submit is acknowledged or refused.
    """
    tracer = _tracer_for("client")
    if tracer is None:
        return specs, []
    kind = _otel.SpanKind.PRODUCER
    traced: list[TaskSpec] = []
    spans: list[Any] = []
    for spec in specs:
        span = tracer.start_span("submit", context=context_of(spec.trace), kind=kind,
                                 attributes={TASK_ID: spec.task_id, TASK_NAME: spec.name})
        spans.append(span)
        traced.append(dataclasses.replace(spec, trace=trace_of(_otel.set_span_in_context(span))))
    return traced, spans


def end_submits(spans: Iterable[Any], error: BaseException | None = None) -> None:
    """End the ``submit`` spans of :func:`start_submits`: an error status if the submit failed with ``error``."""
    spans = list(spans)
    if not spans:
        return
    status = None if error is None else _otel.Status(_otel.StatusCode.ERROR, f"{type(error).__name__}: {error}"[:512])
    for span in spans:
        if status is not None:
            span.set_status(status)
        span.end()


# --------------------------------------------------------------------------- the coordinator


def placed(trace: str, task_id: str, name: str, attempt: int, worker_id: str, priority: int,
           ready_ns: int, placed_ns: int) -> None:
    """The coordinator placed an attempt: its ``queue wait`` (ready -> placed) and ``placement`` spans.

    Both are children of the task's ``submit`` span (``trace``), made whole with their
    times (wall-clock ns), so nothing stays open between the two events.
    """
    tracer = _tracer_for("coordinator")
    context = context_of(trace) if tracer is not None else None
    if context is None:
        return
    attributes = {TASK_ID: task_id, TASK_NAME: name, ATTEMPT: attempt}
    ready_ns = min(ready_ns, placed_ns)
    tracer.start_span("queue wait", context=context, attributes=attributes,
                      start_time=ready_ns).end(end_time=placed_ns)
    tracer.start_span("placement", context=context, start_time=placed_ns,
                      attributes={**attributes, WORKER_ID: worker_id, PRIORITY: priority}).end(end_time=placed_ns)


# --------------------------------------------------------------------------- the worker


def executed(trace: str, task_id: str, name: str, attempt: int, epoch: int, worker_id: str, ok: bool,
             error_type: str, error_message: str, duration_s: float, end_ns: int) -> None:
    """An attempt ended on this worker: its ``execute`` span, from ``end_ns - duration_s`` to ``end_ns``.

    A failure (the task raised, timed out, was cancelled, its child died) has the error
    status, with the error's type and message, and an ``exception`` event.
    """
    tracer = _tracer_for("worker")
    context = context_of(trace) if tracer is not None else None
    if context is None:
        return
    attributes: dict[str, Any] = {TASK_ID: task_id, TASK_NAME: name, ATTEMPT: attempt, EPOCH: epoch,
                                  WORKER_ID: worker_id, OUTCOME: "succeeded" if ok else "failed",
                                  DURATION_S: duration_s}
    if not ok:
        attributes[ERROR_TYPE] = error_type
    span = tracer.start_span("execute", context=context, kind=_otel.SpanKind.CONSUMER, attributes=attributes,
                             start_time=end_ns - max(0, int(duration_s * 1e9)))
    if not ok:
        span.add_event("exception", {"exception.type": error_type, "exception.message": error_message[:1024]},
                       timestamp=end_ns)
        span.set_status(_otel.Status(_otel.StatusCode.ERROR, f"{error_type}: {error_message}"[:512]))
    span.end(end_time=end_ns)
