"""Issue 9 #12: endpoints are parsed whole, so nothing passes the loopback check by its prefix."""

from __future__ import annotations

import pytest

from actorsched import config as c
from actorsched.errors import ConfigError

BAD_ENDPOINTS = [
    "tcp://127.0.0.1;0.0.0.0:7700",  # ZeroMQ: from source 127.0.0.1 to 0.0.0.0
    "tcp://127.0.0.1;127.0.0.2:7700",
    "tcp://127.0.0.1 :7700",
    "tcp://::1:7700",  # IPv6 goes in brackets
    "tcp://[127.0.0.1]:7700",
    "tcp://[::1:7700",
    "tcp://999.0.0.1:7700",
    "tcp://127.0.0.1:+1",
    "tcp://127.0.0.1:\u00b2",  # a digit to str.isdigit, not to int()
    "tcp://127.0.0.1:65536",
    "tcp://*:7700",
    "tcp://-bad.example:7700",
    "ipc:///tmp/x:7700",
]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_a_malformed_endpoint_is_a_config_error_naming_it_and_the_form(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        c.with_overrides(c.CoordinatorConfig(), "endpoints", client_endpoint=endpoint)
    assert repr(endpoint) in str(caught.value) and "tcp://HOST:PORT" in str(caught.value)


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_a_malformed_worker_connect_endpoint_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        c.with_overrides(c.WorkerConfig(), "connection", coordinator=endpoint)


@pytest.mark.parametrize(("endpoint", "host", "port"), [
    ("tcp://127.0.0.1:0", "127.0.0.1", 0),
    ("tcp://127.9.8.7:65535", "127.9.8.7", 65535),
    ("tcp://[::1]:7700", "[::1]", 7700),
    ("tcp://localhost:7700", "localhost", 7700),
    ("tcp://coordinator-1.example.com:7701", "coordinator-1.example.com", 7701),
])
def test_a_well_formed_endpoint_is_parsed_whole(endpoint: str, host: str, port: int) -> None:
    assert c.parse_endpoint(endpoint, "endpoint") == (host, port)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("127.0.0.1;0.0.0.0", False), ("127.evil.example", False), ("0.0.0.0", False), ("localhost.example", False),
    ("128.0.0.1", False), ("", False),
])
def test_loopback_is_decided_on_the_whole_host(host: str, loopback: bool) -> None:
    assert c.is_loopback_host(host) is loopback


@pytest.mark.parametrize("name", ["client_endpoint", "worker_endpoint"])
def test_a_semicolon_endpoint_cannot_pass_for_loopback(name: str) -> None:
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        c.with_overrides(c.CoordinatorConfig(), "endpoints", **{name: "tcp://127.0.0.1;0.0.0.0:7700"})


@pytest.mark.parametrize("endpoint", ["127.0.0.1;0.0.0.0:7702", "127.0.0.1 :7702", "::1:7702"])
def test_a_malformed_status_page_address_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        c.http_address(endpoint, "[http]")


def test_the_status_page_may_bind_ipv6_loopback() -> None:
    assert c.http_address("[::1]:0", "[http]") == ("[::1]", 0)
