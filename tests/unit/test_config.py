"""Configuration: strict TOML loading into frozen dataclasses, and the commented files in configs/."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from actorsched import config as c
from actorsched.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COORDINATOR_TOML = ROOT / "configs" / "coordinator.toml"
WORKER_TOML = ROOT / "configs" / "worker.toml"


def write(tmp_path: Path, text: str, name: str = "coordinator.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, loader: Any = c.load_coordinator_config) -> tuple[str, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        loader(path)
    return str(caught.value), str(path)


# ----------------------------------------------------------------- loading


def test_no_path_gives_the_defaults() -> None:
    assert c.load_coordinator_config(None) == c.CoordinatorConfig()
    assert c.load_worker_config(None) == c.WorkerConfig()


def test_the_defaults_follow_the_design_brief() -> None:
    config = c.CoordinatorConfig()
    assert config.liveness.worker_timeout_s == 15.0
    assert config.liveness.scan_interval_s == 5.0
    assert (config.tasks.retry_backoff_base_s, config.tasks.retry_backoff_cap_s) == (0.1, 5.0)
    assert config.tasks.max_attempts == 4
    assert config.endpoints.client_endpoint == "tcp://127.0.0.1:7700"
    assert config.endpoints.worker_endpoint == "tcp://127.0.0.1:7701"


def test_a_full_valid_coordinator_file_loads_every_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
[endpoints]
client_endpoint = "tcp://127.0.0.1:9000"
worker_endpoint = "tcp://0.0.0.0:9001"
max_message_bytes = 1024
[security]
secret_key_file = "keys/coordinator.key_secret"
worker_keys_dir = "keys/workers"
client_keys_dir = "keys/clients"
[journal]
state_dir = "/var/lib/as"
enabled = false
fsync = false
[liveness]
heartbeat_interval_s = 0.5
suspect_after_s = 2
worker_timeout_s = 6.0
scan_interval_s = 1.0
pause_threshold_s = 2.0
[tasks]
default_timeout_s = 30
max_attempts = 2
retry_backoff_base_s = 0.5
retry_backoff_cap_s = 10.0
max_pending_tasks = 100
max_worker_deaths = 1
[placement]
running_weight = 2.0
cpu_weight = 0.0
memory_weight = 0.0
max_assign_batch = 8
aging_s_per_priority = 10.0
retry_elsewhere_s = 0.5
[logging]
level = "DEBUG"
""")
    config = c.load_coordinator_config(path)
    assert config.endpoints == c.EndpointsConfig("tcp://127.0.0.1:9000", "tcp://0.0.0.0:9001", 1024)
    assert config.security == c.SecurityConfig("keys/coordinator.key_secret", "keys/workers", "keys/clients")
    assert config.journal == c.JournalConfig("/var/lib/as", False, False)
    assert config.liveness == c.LivenessConfig(0.5, 2.0, 6.0, 1.0, 2.0)
    assert config.tasks == c.TasksConfig(30.0, 2, 0.5, 10.0, 100, 1)
    assert config.placement == c.PlacementConfig(2.0, 0.0, 0.0, 8, 10.0, 0.5)
    assert config.logging.level == "DEBUG"
    assert type(config.liveness.suspect_after_s) is float  # an integer in TOML becomes a float


def test_a_partial_file_keeps_the_defaults_of_missing_keys(tmp_path: Path) -> None:
    config = c.load_coordinator_config(write(tmp_path, "[tasks]\nmax_attempts = 9\n"))
    assert config.tasks == dataclasses.replace(c.TasksConfig(), max_attempts=9)
    assert config.liveness == c.LivenessConfig()


def test_a_worker_file_loads_lists_of_strings(tmp_path: Path) -> None:
    path = write(tmp_path, '[worker]\ntags = ["gpu", "ssd"]\nslots = 2\n'
                           '[execution]\nallowed_modules = ["myproj.*"]\n', "worker.toml")
    config = c.load_worker_config(path)
    assert config.worker.tags == ["gpu", "ssd"] and config.worker.slots == 2
    assert config.execution.allowed_modules == ["myproj.*"]


# ----------------------------------------------------------------- errors


@pytest.mark.parametrize(("text", "section", "key", "value"), [
    # wrong types
    ('[liveness]\nheartbeat_interval_s = "1"\n', "[liveness]", "heartbeat_interval_s", "'1'"),
    ("[tasks]\nmax_attempts = 2.5\n", "[tasks]", "max_attempts", "2.5"),
    ("[tasks]\nmax_attempts = true\n", "[tasks]", "max_attempts", "True"),
    ("[liveness]\nscan_interval_s = true\n", "[liveness]", "scan_interval_s", "True"),
    ("[journal]\nfsync = 1\n", "[journal]", "fsync", "1"),
    ("[journal]\nstate_dir = 5\n", "[journal]", "state_dir", "5"),
    # zero and negative values
    ("[liveness]\nheartbeat_interval_s = -1.0\n", "[liveness]", "heartbeat_interval_s", "-1.0"),
    ("[tasks]\nmax_attempts = 0\n", "[tasks]", "max_attempts", "0"),
    ("[tasks]\nmax_pending_tasks = -5\n", "[tasks]", "max_pending_tasks", "-5"),
    ("[tasks]\nmax_worker_deaths = 0\n", "[tasks]", "max_worker_deaths", "0"),
    ("[tasks]\ndefault_timeout_s = -0.5\n", "[tasks]", "default_timeout_s", "-0.5"),
    ("[endpoints]\nmax_message_bytes = 0\n", "[endpoints]", "max_message_bytes", "0"),
    ("[placement]\ncpu_weight = -1.0\n", "[placement]", "cpu_weight", "-1.0"),
    ("[placement]\nmax_assign_batch = 0\n", "[placement]", "max_assign_batch", "0"),
    ("[placement]\naging_s_per_priority = -1.0\n", "[placement]", "aging_s_per_priority", "-1.0"),
    # invalid choice
    ('[logging]\nlevel = "info"\n', "[logging]", "level", "'info'"),
    ('[logging]\nlevel = "TRACE"\n', "[logging]", "level", "'TRACE'"),
    # bad endpoints
    ('[endpoints]\nclient_endpoint = "127.0.0.1:7700"\n', "[endpoints]", "client_endpoint", "'127.0.0.1:7700'"),
    ('[endpoints]\nworker_endpoint = "tcp://127.0.0.1"\n', "[endpoints]", "worker_endpoint", "'tcp://127.0.0.1'"),
    ('[endpoints]\nworker_endpoint = "tcp://:7701"\n', "[endpoints]", "worker_endpoint", "'tcp://:7701'"),
    ('[endpoints]\nclient_endpoint = "tcp://h:99999"\n', "[endpoints]", "client_endpoint", "'tcp://h:99999'"),
    ('[endpoints]\nclient_endpoint = "tcp://h:port"\n', "[endpoints]", "client_endpoint", "'tcp://h:port'"),
    # unknown key
    ("[liveness]\nheartbeat_interval = 1.0\n", "[liveness]", "heartbeat_interval", ""),
])
def test_a_bad_value_is_refused_naming_the_file_section_key_and_value(
    tmp_path: Path, text: str, section: str, key: str, value: str,
) -> None:
    message, path = load_error(tmp_path, text)
    assert path in message
    assert section in message
    assert key in message
    assert value in message


def test_an_unknown_section_is_refused_naming_the_file_and_section(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[livenes]\nheartbeat_interval_s = 1.0\n")
    assert path in message and "[livenes]" in message and "liveness" in message


def test_a_section_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "tasks = 3\n")
    assert path in message and "[tasks]" in message and "3" in message


def test_a_worker_tag_list_of_non_strings_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[worker]\ntags = [1, 2]\n", c.load_worker_config)
    assert path in message and "[worker]" in message and "tags" in message and "[1, 2]" in message


def test_an_invalid_worker_start_method_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, '[worker]\nstart_method = "thread"\n', c.load_worker_config)
    assert path in message and "[worker]" in message and "start_method" in message and "'thread'" in message


@pytest.mark.parametrize("text", [
    "[liveness]\nheartbeat_interval_s = 15.0\n",
    "[liveness]\nheartbeat_interval_s = 20.0\nsuspect_after_s = 25.0\nworker_timeout_s = 20.0\n",
])
def test_a_worker_timeout_not_above_the_heartbeat_interval_is_refused(tmp_path: Path, text: str) -> None:
    message, path = load_error(tmp_path, text)
    assert path in message and "[liveness]" in message
    assert "worker_timeout_s" in message and "heartbeat_interval_s" in message


@pytest.mark.parametrize(("suspect", "value"), [("1.0", "1.0"), ("0.5", "0.5"), ("16.0", "16.0")])
def test_a_suspect_time_outside_heartbeat_to_timeout_is_refused(tmp_path: Path, suspect: str, value: str) -> None:
    message, path = load_error(tmp_path, f"[liveness]\nsuspect_after_s = {suspect}\n")
    assert path in message and "[liveness]" in message and "suspect_after_s" in message and value in message


def test_a_suspect_time_equal_to_the_timeout_is_allowed(tmp_path: Path) -> None:
    config = c.load_coordinator_config(write(tmp_path, "[liveness]\nsuspect_after_s = 15.0\n"))
    assert config.liveness.suspect_after_s == 15.0


def test_a_backoff_cap_below_the_base_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[tasks]\nretry_backoff_base_s = 2.0\nretry_backoff_cap_s = 1.0\n")
    assert path in message and "[tasks]" in message and "retry_backoff_cap_s" in message


def test_one_endpoint_for_clients_and_workers_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, '[endpoints]\nclient_endpoint = "tcp://127.0.0.1:7701"\n')
    assert path in message and "[endpoints]" in message and "tcp://127.0.0.1:7701" in message


def test_port_zero_for_both_endpoints_is_allowed(tmp_path: Path) -> None:
    text = '[endpoints]\nclient_endpoint = "tcp://127.0.0.1:0"\nworker_endpoint = "tcp://127.0.0.1:0"\n'
    assert c.load_coordinator_config(write(tmp_path, text)).endpoints.client_endpoint.endswith(":0")


def test_worker_reconnect_max_below_min_is_refused(tmp_path: Path) -> None:
    text = "[connection]\nreconnect_min_s = 2.0\nreconnect_max_s = 1.0\n"
    message, path = load_error(tmp_path, text, c.load_worker_config)
    assert path in message and "[connection]" in message and "reconnect_max_s" in message


def test_invalid_toml_syntax_is_refused_naming_the_file(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, "[tasks\nmax_attempts = \n")
    assert path in message and "TOML" in message


def test_a_missing_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="nowhere.toml"):
        c.load_coordinator_config(path)
    with pytest.raises(ConfigError, match="nowhere.toml"):
        c.load_worker_config(str(path))


# ----------------------------------------------------------------- overrides


def test_with_overrides_replaces_only_the_given_keys_and_skips_none() -> None:
    base = c.CoordinatorConfig()
    updated = c.with_overrides(base, "tasks", max_attempts=7, max_worker_deaths=None)
    assert updated.tasks == dataclasses.replace(base.tasks, max_attempts=7)
    assert updated.liveness == base.liveness
    assert base.tasks.max_attempts == 4  # the original is untouched
    assert c.with_overrides(base, "tasks", max_attempts=None) is base


@pytest.mark.parametrize(("section", "values", "expected"), [
    ("tasks", {"max_attempts": 0}, "max_attempts"),
    ("tasks", {"max_attempts": "3"}, "max_attempts"),
    ("logging", {"level": "LOUD"}, "level"),
    ("endpoints", {"client_endpoint": "localhost:1"}, "client_endpoint"),
    ("liveness", {"worker_timeout_s": 0.5}, "worker_timeout_s"),
])
def test_with_overrides_validates_values_and_relations(section: str, values: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        c.with_overrides(c.CoordinatorConfig(), section, "--flag", **values)
    assert "--flag" in str(caught.value)


def test_with_overrides_refuses_an_unknown_key_with_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no_such_key"):
        c.with_overrides(c.CoordinatorConfig(), "tasks", no_such_key=1)


def test_with_overrides_validates_worker_settings() -> None:
    updated = c.with_overrides(c.WorkerConfig(), "worker", slots=3, tags=["gpu"])
    assert updated.worker.slots == 3 and updated.worker.tags == ["gpu"]
    with pytest.raises(ConfigError, match="slots"):
        c.with_overrides(c.WorkerConfig(), "worker", slots=-1)


# ----------------------------------------------------------------- the files in configs/


def assert_file_sets_every_field(path: Path, config_cls: type, loaded: Any) -> None:
    with open(path, "rb") as f:
        data = tomllib.load(f)
    sections = {f.name: f for f in dataclasses.fields(config_cls)}
    assert set(data) == set(sections), f"{path.name}: sections differ from {config_cls.__name__}"
    for name in sections:
        section_cls = type(getattr(loaded, name))
        expected = {f.name for f in dataclasses.fields(section_cls)}
        assert set(data[name]) == expected, (
            f"{path.name} [{name}]: missing {sorted(expected - set(data[name]))}, "
            f"unknown {sorted(set(data[name]) - expected)}"
        )


def test_the_coordinator_file_sets_every_field_of_every_section() -> None:
    loaded = c.load_coordinator_config(COORDINATOR_TOML)
    assert_file_sets_every_field(COORDINATOR_TOML, c.CoordinatorConfig, loaded)


def test_the_coordinator_file_holds_the_default_values() -> None:
    assert c.load_coordinator_config(COORDINATOR_TOML) == c.CoordinatorConfig()


def test_the_worker_file_sets_every_field_of_every_section() -> None:
    assert WORKER_TOML.exists(), f"{WORKER_TOML} must list every worker setting"
    loaded = c.load_worker_config(WORKER_TOML)
    assert_file_sets_every_field(WORKER_TOML, c.WorkerConfig, loaded)


def test_the_config_files_comment_every_key() -> None:
    for path in (COORDINATOR_TOML, WORKER_TOML):
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if "=" in line and not line.lstrip().startswith("#"):
                above = lines[max(0, index - 3):index]
                assert any(a.lstrip().startswith("#") for a in above), (
                    f"{path.name}:{index + 1} {line.strip()!r} has no comment above it"
                )


def test_binding_beyond_loopback_without_curve_keys_is_refused(tmp_path: Path) -> None:
    message, path = load_error(tmp_path, '[endpoints]\nworker_endpoint = "tcp://0.0.0.0:9001"\n')
    assert "not loopback" in message and "[security]" in message and path in message


def test_curve_settings_go_together(tmp_path: Path) -> None:
    message, _ = load_error(tmp_path, '[security]\nsecret_key_file = "k.key_secret"\n')
    assert "all three or none" in message
    message, _ = load_error(tmp_path, '[connection]\nsecret_key_file = "w.key_secret"\n', c.load_worker_config)
    assert "set both or neither" in message


def test_the_default_worker_id_is_host_pid_or_with_a_curve_key_its_name_first() -> None:
    plain = c.WorkerConfig()
    assert plain.resolved_worker_id().endswith(f"-{__import__('os').getpid()}")
    keyed = dataclasses.replace(plain, connection=dataclasses.replace(
        plain.connection, server_public_key_file="keys/coordinator.key", secret_key_file="keys/gpu.key_secret"))
    assert keyed.resolved_worker_id() == f"gpu-{plain.resolved_worker_id()}"  # the key "gpu" allows it
    named = dataclasses.replace(keyed, worker=dataclasses.replace(keyed.worker, worker_id="gpu-7"))
    assert named.resolved_worker_id() == "gpu-7"
