"""The coordinator's status page: health, JSON status and Prometheus metrics from a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

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
    assert 'actorsched_worker_slots{worker="worker-1",state="ALIVE",breaker="closed"} 2' in metrics
    assert get(shared_cluster, "/nothing-here")[0] == 404


@pytest.mark.parametrize("endpoint", ["0.0.0.0:7702", "nonsense"])
def test_a_status_page_beyond_loopback_or_malformed_is_refused(endpoint: str) -> None:
    result = subprocess.run([sys.executable, str(BIN / "coordinator"), "--http", endpoint, "--bind", "tcp://127.0.0.1:0",
                             "--worker-bind", "tcp://127.0.0.1:0", "--no-journal"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "[http]" in result.stderr
