"""The coordinator's status page: health, JSON status and Prometheus metrics from a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actorsched.client import Client
from actorsched.localcluster import BIN, ROOT, LocalCluster


def get(cluster: LocalCluster, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{cluster.http_endpoint}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_status_page_reports_health_tasks_and_workers(shared_cluster: LocalCluster,
                                                          shared_client: Client) -> None:
    shared_client.submit("actorsched.tasks:echo", 1).result(timeout=30)
    assert get(shared_cluster, "/healthz") == (200, "ok\n")
    code, body = get(shared_cluster, "/status")
    status = json.loads(body)
    assert code == 200 and status["queue"]["states"]["SUCCEEDED"] >= 1
    assert sorted(w["worker_id"] for w in status["workers"]) == ["worker-1", "worker-2"]
    code, metrics = get(shared_cluster, "/metrics")
    assert code == 200 and 'actorsched_tasks{state="SUCCEEDED"}' in metrics
    assert 'actorsched_worker_slots{breaker="closed",state="ALIVE",worker="worker-1"} 2.0' in metrics
    assert get(shared_cluster, "/nothing-here")[0] == 404


def test_metrics_parse_as_prometheus_text_with_help_and_type_for_every_family(
        shared_cluster: LocalCluster, shared_client: Client) -> None:
    """Issue 10 #4: the page is prometheus_client's own format, read back by its own parser."""
    odd = "actorsched.tasks:no_such_task"  # fails on the worker: counted under its own name
    handles = shared_client.submit_many([{"name": "actorsched.tasks:echo", "args": [i]} for i in range(20)])
    failing = shared_client.submit(odd, max_attempts=1)
    shared_client.gather(handles, timeout=30)
    shared_client.gather([failing], timeout=30, return_exceptions=True)
    code, text = get(shared_cluster, "/metrics")
    assert code == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for family in families.values():  # a family without TYPE parses as "unknown", without HELP as ""
        assert family.type != "unknown" and family.documentation, family.name
    assert text.count("# TYPE ") == len(families)  # each family once: samples not interleaved

    def sample(family: str, suffix: str, **labels: str) -> float:
        return next(s.value for s in families[family].samples
                    if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()))
    assert families["actorsched_queue_wait_seconds"].type == "histogram"
    assert sample("actorsched_queue_wait_seconds", "_count") >= 21
    assert sample("actorsched_submit_to_result_seconds", "_count") >= 21
    assert sample("actorsched_journal_commit_seconds", "_count") >= 1
    assert sample("actorsched_run_seconds", "_count", name="actorsched.tasks:echo") >= 20
    assert sample("actorsched_task_outcomes", "_total", name="actorsched.tasks:echo", outcome="succeeded") >= 20
    assert sample("actorsched_task_outcomes", "_total", name=odd, outcome="failed") >= 1
    assert sample("actorsched_worker_slots", "", worker="worker-1") == 2


@pytest.mark.parametrize("endpoint", ["0.0.0.0:7702", "nonsense"])
def test_a_status_page_beyond_loopback_or_malformed_is_refused(endpoint: str) -> None:
    result = subprocess.run([sys.executable, str(BIN / "coordinator"), "--http", endpoint, "--bind", "tcp://127.0.0.1:0",
                             "--worker-bind", "tcp://127.0.0.1:0", "--no-journal"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "[http]" in result.stderr
