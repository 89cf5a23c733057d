"""Pure parts of the worker loop and entry point: retry delays, routing ids, load sampler, flags."""

from __future__ import annotations

import logging

import pytest
import zmq

from actorsched.config import WorkerConfig
from actorsched.worker import app
from actorsched.worker.connection import (
    StopRequests,
    describe_handshake_failure,
    public_key_file,
    register_retry_delay_s,
    routing_id,
)
from actorsched.worker.load import LoadSample, LoadSampler


def test_register_retry_waits_for_a_welcome_then_backs_off_up_to_the_cap() -> None:
    delays = [register_retry_delay_s(n, 1.0, 0.1, 5.0) for n in range(1, 10)]
    assert delays[0] == pytest.approx(2.1)
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(7.0)
    assert register_retry_delay_s(1, 3.0, 0.1, 5.0) == pytest.approx(6.1)  # slow heartbeats wait longer


def test_routing_ids_are_unique_per_socket() -> None:
    first, second = routing_id("w1", 42), routing_id("w1", 42)
    assert first != second and first.startswith(b"w1/42/") and second.startswith(b"w1/42/")


def test_stop_requests_count_signals() -> None:
    requests = StopRequests()
    requests.request()
    requests.request()
    assert requests.count == 2


def test_load_sampler_reports_injected_readings_and_primes_cpu() -> None:
    calls: list[str] = []

    def cpu() -> float:
        calls.append("cpu")
        return 12

    sampler = LoadSampler(cpu_percent=cpu, memory_percent=lambda: 40.5)
    assert calls == ["cpu"]  # primed at construction
    assert sampler.sample() == LoadSample(12.0, 40.5)


def test_load_sampler_reads_the_real_host() -> None:
    sample = LoadSampler().sample()
    assert 0 <= sample.cpu_percent <= 100 and 0 < sample.memory_percent <= 100


def test_flags_override_the_config() -> None:
    args = app.build_parser().parse_args(
        ["--connect", "tcp://10.0.0.1:9000", "--slots", "3", "--worker-id", "w9", "--tag", "gpu", "--tag", "ssd",
         "--log-level", "debug"])
    config = app.load_config(args)
    assert config.connection.coordinator == "tcp://10.0.0.1:9000"
    assert (config.worker.slots, config.worker.worker_id, config.worker.tags) == (3, "w9", ["gpu", "ssd"])
    assert config.logging.level == "DEBUG"
    assert app.load_config(app.build_parser().parse_args([])) == WorkerConfig()


@pytest.mark.parametrize("argv,fragment", [
    (["--slots", "-1"], "slots must be >= 0"),
    (["--config", "/nonexistent/worker.toml"], "does not exist"),
    (["--connect", "http://x:1"], "tcp://HOST:PORT"),
])
def test_config_errors_exit_2_with_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert app.main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_the_public_key_of_a_key_pair_file_is_its_name_key() -> None:
    assert public_key_file("/keys/gpu.key_secret") == "/keys/gpu.key"
    assert public_key_file("/keys/odd-name") == "/keys/odd-name"


EP = "tcp://10.0.0.1:7701"


@pytest.mark.parametrize(("event", "value", "server_key", "key", "level", "fragments"), [
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400, "/k/coord.key", "/k/w.key_secret", logging.ERROR,
     ["refused this worker's CURVE key", "/k/w.key_secret is not allowed", "copy its public half /k/w.key ",
      "worker_keys_dir", "SIGHUP", "keeps retrying"]),
    (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 500, "/k/coord.key", "/k/w.key_secret", logging.ERROR, ["ZAP status 500"]),
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, "", "", logging.ERROR,
     ["requires CURVE keys and this worker has none", "--server-key", "worker_keys_dir"]),
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, "/k/coord.key",
     "/k/w.key_secret", logging.ERROR, ["does not use CURVE", "drop --server-key/--key"]),
    (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, "", "", logging.ERROR,
     ["protocol error 0x"]),
    (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, "/k/coord.key", "/k/w.key_secret", logging.ERROR,
     ["hung up during the CURVE handshake", "/k/coord.key is not its public key"]),
    (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 104, "", "", logging.WARNING, ["handshake", "failed"]),
])
def test_a_failed_handshake_is_described_with_its_fix(event: int, value: int, server_key: str, key: str, level: int,
                                                      fragments: list[str]) -> None:
    got_level, text = describe_handshake_failure(event, value, EP, server_key, key)
    assert got_level == level
    assert EP in text and all(fragment in text for fragment in fragments), text
