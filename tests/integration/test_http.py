"""The coordinator's status page: health, JSON status and Prometheus metrics from a real process."""

from __future__ import annotations

import http.client
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

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


def start_coordinator(*args: str) -> subprocess.CompletedProcess[str]:
    """A coordinator that is expected to refuse to start: its exit code and stderr."""
    return subprocess.run([sys.executable, str(BIN / "coordinator"), "--bind", "tcp://127.0.0.1:0",
                           "--worker-bind", "tcp://127.0.0.1:0", "--no-journal", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("endpoint", ["0.0.0.0:7702", "nonsense"])
def test_a_status_page_beyond_loopback_or_malformed_is_refused(endpoint: str) -> None:
    result = start_coordinator("--http", endpoint)
    assert result.returncode == 2 and "[http]" in result.stderr


def test_a_status_page_beyond_loopback_without_a_token_file_is_refused_with_the_fix() -> None:
    result = start_coordinator("--http", "0.0.0.0:0")
    assert result.returncode == 2
    assert "'0.0.0.0:0' is not loopback" in result.stderr and "token_file" in result.stderr
    assert "secrets.token_urlsafe" in result.stderr and "bind 127.0.0.1" in result.stderr  # how to fix it


@pytest.mark.parametrize("content, reason", [(None, "cannot be read"), ("short", "at least 16"),
                                             ("has spaces in the middle of it", "at least 16")])
def test_a_missing_or_weak_token_file_is_refused(tmp_path: Path, content: str | None, reason: str) -> None:
    token_file = tmp_path / "http.token"
    if content is not None:
        token_file.write_text(content + "\n")
    config = tmp_path / "coordinator.toml"
    config.write_text(f'[http]\nendpoint = "0.0.0.0:0"\ntoken_file = "{token_file}"\n')
    result = start_coordinator("--config", str(config))
    assert result.returncode == 2 and "token_file" in result.stderr and reason in result.stderr, result.stderr


@pytest.fixture
def token_cluster(tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> tuple[LocalCluster, str, int]:
    """A coordinator whose page listens on every address, with a token: (cluster, token, port)."""
    token = secrets.token_urlsafe(24) + "+/="  # base64's characters too: a + in ?token= is not a space
    (tmp_path / "http.token").write_text(token + "\n")
    (tmp_path / "coordinator.toml").write_text(f'[http]\ntoken_file = "{tmp_path / "http.token"}"\n')
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(tmp_path / "coordinator.toml"),
                                                        "--http", "0.0.0.0:0"])
    host, _, port = cluster.http_endpoint.rpartition(":")
    assert host == "0.0.0.0"
    return cluster, token, int(port)


def request(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read().decode()
    finally:
        conn.close()


def test_beyond_loopback_every_request_needs_the_token(token_cluster: tuple[LocalCluster, str, int]) -> None:
    _, token, port = token_cluster
    for path in ("/healthz", "/status", "/metrics", "/", "/api/overview", "/dashboard/app.js", "/nothing"):
        code, headers, body = request(port, path)
        assert code == 401 and headers["www-authenticate"].startswith("Bearer"), (path, code)
        assert "Authorization: Bearer" in body and "token_file" in body
        assert request(port, path, Authorization=f"Bearer {token[:-1]}x")[0] == 401
        assert request(port, path, Authorization="Bearer")[0] == 401
    for path in ("/healthz", "/status", "/metrics", "/", "/api/overview", "/dashboard/app.js"):
        assert request(port, path, Authorization=f"Bearer {token}")[0] == 200, path
    assert request(port, "/nothing", Authorization=f"Bearer {token}")[0] == 404
    code, _, body = request(port, "/api/overview", Authorization=f"Bearer {token}")
    assert json.loads(body)["workers"] == []


def test_a_browser_gives_the_token_once_and_keeps_it_as_a_cookie(
        token_cluster: tuple[LocalCluster, str, int]) -> None:
    _, token, port = token_cluster
    assert request(port, "/?token=wrong-token-wrong-token")[0] == 401
    code, headers, _ = request(port, f"/dashboard?token={token}&x=1")
    assert code == 303 and headers["location"] == "/dashboard?x=1"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert f"={token};" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name = cookie.split("=", 1)[0]
    assert name == f"actorsched_token_{port}"  # one cookie per port: two coordinators on a host do not clash
    assert request(port, "/api/overview", Cookie=f"other=1; {name}={token}")[0] == 200
    assert request(port, "/api/overview", Cookie=f"{name}={token[:-1]}")[0] == 401
    for target in ("//evil.example/?token=", "///evil.example/?token="):  # the redirect never leaves the site
        location = request(port, target + token)[1]["location"]
        assert location.startswith("/") and not location.startswith("//"), location
