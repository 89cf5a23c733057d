"""OpenTelemetry across real processes: one trace per task from the client's submit through the
coordinator's queue to the worker's execution; and, when tracing is off, nothing at all.

The coordinator and the workers are real processes (``LocalCluster``) that trace into the
``jsonl`` exporter (``OTEL_TRACES_EXPORTER=jsonl``: one file of JSON lines per process in
the test's folder), chosen over ``console`` because every process's spans then come back
exact, whole and attributed to their process, with nothing else mixed in.  The client is
this test process, tracing into the SDK's ``InMemorySpanExporter``.  The processes are
stopped (SIGTERM, their normal shutdown path) before their files are read: that their
spans are all there is the check that they flush on the way out.  No sleep synchronises
anything; every wait is bounded, and ``make_cluster`` stops every process even when a
test fails.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actorsched import tracing
from actorsched.client import Client
from actorsched.errors import TaskFailed
from actorsched.localcluster import ROOT, LocalCluster

pytestmark = pytest.mark.timeout(180)

TASK_TIMEOUT_S = 30.0
OTEL_VARIABLES = ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                  tracing.JSONL_DIR_ENV)


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: datetime
    end: datetime
    status: str
    attributes: dict[str, Any]

    @property
    def task_id(self) -> str:
        return str(self.attributes.get("actorsched.task_id", ""))


def _span(line: str) -> Span:
    """A span from the JSON the SDK writes (``ReadableSpan.to_json``), as the jsonl and console exporters do."""
    data = json.loads(line)
    parent = data["parent_id"]
    return Span(data["name"], data["resource"]["attributes"]["service.name"], data["context"]["trace_id"][2:],
                data["context"]["span_id"][2:], parent[2:] if parent else None,
                datetime.fromisoformat(data["start_time"]), datetime.fromisoformat(data["end_time"]),
                data["status"]["status_code"], data["attributes"])


@pytest.fixture
def traced_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The environment the cluster's processes inherit: trace into jsonl files in the returned folder."""
    folder = tmp_path / "spans"
    folder.mkdir()
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl")
    monkeypatch.setenv(tracing.JSONL_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def client_spans(traced_env: Path, memory_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    """This process's client traces into memory (tests/conftest.py), with the cluster's environment set first."""
    return memory_spans


def _stop(cluster: LocalCluster) -> None:
    """Stop every process the normal way (SIGTERM) and check each one ended cleanly, so it flushed its spans."""
    cluster.stop()
    assert cluster.coordinator is not None and cluster.coordinator.returncode == 0, cluster.log_text()[-3000:]
    for number, proc in enumerate(cluster.worker_procs, 1):
        assert proc.returncode == 0, cluster.log_text(f"worker-{number}")[-3000:]


def _all_spans(folder: Path, exporter: InMemorySpanExporter) -> list[Span]:
    tracing.flush()
    spans = [_span(span.to_json(indent=None)) for span in exporter.get_finished_spans()]
    for path in sorted(folder.glob("*.jsonl")):
        spans += [_span(line) for line in path.read_text().splitlines()]
    return spans


def _one(spans: list[Span], name: str, task_id: str) -> Span:
    found = [s for s in spans if s.name == name and s.task_id == task_id]
    assert len(found) == 1, f"{len(found)} {name!r} spans of task {task_id}: {found}"
    return found[0]


def _check_chain(spans: list[Span], task_id: str, worker_ids: set[str]) -> tuple[Span, Span]:
    """The task's spans form one trace: submit (client) -> queue wait, placement (coordinator), execute (worker)."""
    submit = _one(spans, "submit", task_id)
    wait, placement, execute = (_one(spans, name, task_id) for name in ("queue wait", "placement", "execute"))
    assert submit.service == "actorsched-client"
    assert wait.service == placement.service == "actorsched-coordinator"
    assert execute.service == "actorsched-worker"
    for child in (wait, placement, execute):
        assert (child.trace_id, child.parent_id) == (submit.trace_id, submit.span_id), (child, submit)
    assert {s.trace_id for s in spans if s.task_id == task_id} == {submit.trace_id}
    assert placement.attributes["actorsched.attempt"] == execute.attributes["actorsched.attempt"] == 1
    assert placement.attributes["actorsched.worker_id"] == execute.attributes["actorsched.worker_id"]
    assert execute.attributes["actorsched.worker_id"] in worker_ids
    # Causal order.  (The placement is stamped when the coordinator's TaskQueue records it, which may
    # be just after the assignment left for the worker: it is not compared with the execution.)
    assert submit.start <= wait.start <= wait.end == placement.start == placement.end
    assert wait.start <= execute.start <= execute.end
    return submit, execute


def test_each_task_is_one_trace_from_the_clients_submit_to_the_workers_execution(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], traced_env: Path,
        client_spans: InMemorySpanExporter) -> None:
    cluster = make_cluster(workers=2, slots=2)
    client = ready(cluster)
    handles = [client.submit("actorsched.tasks:add", 1, 2),
               client.submit("actorsched.tasks:fail", "boom", max_attempts=1)]
    handles += client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(3)])
    with TracerProvider().get_tracer("app").start_as_current_span("request") as request:  # the application's
        inside = [client.submit("actorsched.tasks:echo", "inside"), client.submit("actorsched.tasks:echo", "too")]
    handles += inside
    results = client.gather(handles, timeout=TASK_TIMEOUT_S, return_exceptions=True)
    assert results[0] == 3 and isinstance(results[1], TaskFailed) and results[2:] == [0, 1, 2, "inside", "too"]
    _stop(cluster)

    spans = _all_spans(traced_env, client_spans)
    assert {path.name.rsplit("-", 1)[0] for path in traced_env.glob("*.jsonl")} == {
        "actorsched-coordinator", "actorsched-worker"}
    workers = {"worker-1", "worker-2"}
    chains = {h.task_id: _check_chain(spans, h.task_id, workers) for h in handles}
    # A trace per task, except that tasks submitted inside an application's span are in its trace.
    assert len({submit.trace_id for submit, _ in chains.values()}) == len(handles) - 1
    for task_id, (submit, _) in chains.items():
        if task_id in {h.task_id for h in inside}:
            assert submit.trace_id == f"{request.get_span_context().trace_id:032x}"
            assert submit.parent_id == f"{request.get_span_context().span_id:016x}"
        else:
            assert submit.parent_id is None  # the root: no application span around it
    failed_submit, failed = chains[handles[1].task_id]
    assert failed.status == "ERROR" and failed.attributes["actorsched.outcome"] == "failed"
    assert failed.attributes["actorsched.error_type"] == "RuntimeError"
    assert failed_submit.status == "UNSET"  # the submit itself went well
    for task_id, (_, execute) in chains.items():
        if task_id != handles[1].task_id:
            assert execute.status == "UNSET" and execute.attributes["actorsched.outcome"] == "succeeded"
    assert chains[handles[0].task_id][1].attributes["actorsched.task_name"] == "actorsched.tasks:add"


def test_the_trace_is_journaled_with_the_task_and_survives_a_coordinator_restart(
        make_cluster: Callable[..., LocalCluster], connect: Callable[..., Client], traced_env: Path,
        client_spans: InMemorySpanExporter) -> None:
    cluster = make_cluster(workers=0)  # nothing can run the task before the coordinator dies
    client = connect(cluster)
    task_id = client.submit("actorsched.tasks:add", 20, 22).task_id  # acknowledged: in the journal
    client.close()
    cluster.kill_coordinator()  # SIGKILL: the placement spans of a new process, from the journaled trace
    cluster.start_coordinator()
    cluster.add_worker()
    with cluster.client() as again:
        assert again.handle(task_id).result(timeout=TASK_TIMEOUT_S) == 42
    _stop(cluster)

    spans = _all_spans(traced_env, client_spans)
    _check_chain(spans, task_id, {"worker-1"})


IMPORT_WATCH = '''\
"""Test hook (loaded as sitecustomize): record, in one file per process, every opentelemetry module imported."""
import os, sys

_LOG = os.environ.get("ACTORSCHED_TEST_IMPORT_LOG", "")


class _Watch:
    def find_spec(self, name, path=None, target=None):
        if _LOG and name.split(".")[0] == "opentelemetry":
            with open(os.path.join(_LOG, f"{os.getpid()}.txt"), "a") as out:
                out.write(f"{name} argv={sys.argv!r}\\n")
        return None  # the import goes on as usual: this only watches


sys.meta_path.insert(0, _Watch())
'''

CLIENT = textwrap.dedent('''\
    import json, sys
    import msgpack
    import actorsched.client as client_module
    from actorsched import protocol, tracing

    submits = []
    send = client_module.send_frames

    def spy(sock, frames, *args, **kwargs):  # what goes on the wire
        if bytes(frames[1]) == protocol.Submit.KIND:
            submits.append(msgpack.unpackb(bytes(frames[2]), raw=False))
        return send(sock, frames, *args, **kwargs)

    client_module.send_frames = spy
    with client_module.Client(sys.argv[1], timeout_s=10) as client:
        handles = [client.submit("actorsched.tasks:add", 1, 2),
                   client.submit("actorsched.tasks:fail", "boom", max_attempts=1)]
        handles += client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(3)])
        results = client.gather(handles, timeout=30, return_exceptions=True)
    print(json.dumps({
        "enabled": tracing.ENABLED, "ids": [h.task_id for h in handles],
        "results": [r if isinstance(r, int) else f"{type(r).__name__}: {r}" for r in results],
        "specs": [spec for submit in submits for spec in submit[1]],
        "otel": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
    }, default=repr))
''')


def test_with_tracing_off_nothing_is_traced_imported_sent_or_journaled(
        make_cluster: Callable[..., LocalCluster], ready: Callable[..., Client], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    hook, imports = tmp_path / "hook", tmp_path / "imports"
    hook.mkdir()
    imports.mkdir()
    (hook / "sitecustomize.py").write_text(IMPORT_WATCH)
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTORSCHED_TEST_IMPORT_LOG", str(imports))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p))
    cluster = make_cluster(workers=1, slots=2)
    ready(cluster)  # the worker (and its children) are up
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]])}
    run = subprocess.run([sys.executable, "-c", CLIENT, cluster.client_endpoint], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    _stop(cluster)

    assert report["enabled"] is False and report["otel"] == []
    assert report["results"][0] == 3 and report["results"][1].startswith("TaskFailed") and report["results"][2:] == [
        0, 1, 2]
    assert [spec[-1] for spec in report["specs"]] == [""] * 5  # TaskSpec.trace, last on the wire: empty
    assert sorted(spec[0] for spec in report["specs"]) == sorted(report["ids"])
    assert list(imports.iterdir()) == [], [path.read_text() for path in imports.iterdir()]  # no process, no child
    assert cluster.state_dir is not None
    with sqlite3.connect(Path(cluster.state_dir) / "journal.sqlite3") as db:
        stored = [msgpack.unpackb(spec, raw=False) for (spec,) in db.execute("SELECT spec FROM tasks")]
    assert sorted(spec[0] for spec in stored) == sorted(report["ids"])
    assert {len(spec) for spec in stored} == {10}  # journaled without the trace field at all
