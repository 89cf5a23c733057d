"""Configuration: TOML files into frozen dataclasses that hold the defaults.

Each file has sections; each section is one frozen dataclass below and each key one
field.  Loading is strict and happens once at start: an unknown section or key, a value
of the wrong type or out of range raises :class:`ConfigError` naming the file, section,
key, value and what was expected.  Configs are then passed explicitly; nothing reads a
global.  ``configs/coordinator.toml`` and ``configs/worker.toml`` list every key with a
comment; a test keeps them and these dataclasses in step.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actorsched.errors import ConfigError
from actorsched.settings import BreakerConfig, LivenessConfig, PlacementConfig, TasksConfig

__all__ = ["BreakerConfig", "LivenessConfig", "PlacementConfig", "TasksConfig"]  # defined in settings

DEFAULT_CLIENT_ENDPOINT = "tcp://127.0.0.1:7700"
DEFAULT_WORKER_ENDPOINT = "tcp://127.0.0.1:7701"
COORDINATOR_ENV = "ACTORSCHED_COORDINATOR"
JOURNAL_DSN_ENV = "ACTORSCHED_JOURNAL_DSN"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# ----------------------------------------------------------------- coordinator


@dataclass(frozen=True, slots=True)
class EndpointsConfig:
    """Where the coordinator listens.  Loopback by default."""

    client_endpoint: str = DEFAULT_CLIENT_ENDPOINT
    worker_endpoint: str = DEFAULT_WORKER_ENDPOINT
    max_message_bytes: int = 16 * 1024 * 1024
    # How clients and workers on other hosts reach this coordinator, told to them by standbys
    # (PostgreSQL backend).  "" means the bound endpoint, which must then not be a wildcard.
    advertise_client_endpoint: str = ""
    advertise_worker_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class JournalConfig:
    state_dir: str = "state/coordinator"
    enabled: bool = True
    fsync: bool = True
    retention_s: float = 7 * 24 * 3600.0
    compaction_interval_s: float = 60.0
    backend: str = "sqlite"  # or "postgresql": several coordinators, one leads (actorsched.coordinator.journal_pg)
    dsn: str = ""  # PostgreSQL connection string; "" reads $ACTORSCHED_JOURNAL_DSN (and libpq's PG* variables)
    lease_s: float = 3.0  # a leader that cannot renew its lease for this long stops; a standby then takes over

    def resolved_dsn(self) -> str:
        return self.dsn or os.environ.get(JOURNAL_DSN_ENV, "")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """CURVE keys; required to bind anything but loopback (see actorsched.security)."""

    secret_key_file: str = ""
    worker_keys_dir: str = ""
    client_keys_dir: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.secret_key_file)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The status page and dashboard (actorsched.http)."""

    endpoint: str = "127.0.0.1:7702"  # HOST:PORT of the status page; "" turns it off
    token_file: str = ""  # a file holding a random token every request must carry; required beyond loopback


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "text"  # or "json": one JSON object per line (see actorsched.logs)


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# ----------------------------------------------------------------- worker


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    coordinator: str = DEFAULT_WORKER_ENDPOINT
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 5.0
    max_message_bytes: int = 16 * 1024 * 1024
    server_public_key_file: str = ""
    secret_key_file: str = ""


@dataclass(frozen=True, slots=True)
class WorkerSection:
    worker_id: str = ""
    slots: int = 0
    tags: list[str] = field(default_factory=list)
    heartbeat_interval_s: float = 1.0
    drain_timeout_s: float = 30.0
    start_method: str = "forkserver"
    prefetch: int = -1


@dataclass(frozen=True, slots=True)
class ExecutionConfig:
    allowed_modules: list[str] = field(default_factory=lambda: ["actorsched.tasks"])
    default_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    worker: WorkerSection = field(default_factory=WorkerSection)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def resolved_worker_id(self) -> str:
        """``worker_id``, else HOSTNAME-PID; with a CURVE key NAME.key_secret, NAME-HOSTNAME-PID (the key allows it)."""
        if self.worker.worker_id:
            return self.worker.worker_id
        default = f"{os.uname().nodename}-{os.getpid()}"
        key = self.connection.secret_key_file
        return f"{Path(key).name.removesuffix('.key_secret')}-{default}" if key else default

    def resolved_slots(self) -> int:
        return self.worker.slots or min(os.cpu_count() or 1, _AT_MOST["slots"])

    def resolved_prefetch(self) -> int:
        """Tasks held queued beyond the slots; -1 means 16 per slot."""
        return self.worker.prefetch if self.worker.prefetch >= 0 else 16 * self.resolved_slots()


# ----------------------------------------------------------------- rules

_POSITIVE = {
    "max_message_bytes", "heartbeat_interval_s", "worker_timeout_s", "scan_interval_s", "suspect_after_s",
    "pause_threshold_s", "retention_s", "compaction_interval_s", "window_s", "min_attempts", "failure_ratio", "open_s",
    "max_attempts", "retry_backoff_base_s", "retry_backoff_cap_s", "max_pending_tasks",
    "max_pending_per_client", "max_pending_bytes", "start_timeout_s",
    "max_worker_deaths", "max_assign_batch", "reconnect_min_s", "reconnect_max_s", "lease_s",
}
_NON_NEGATIVE = {
    "finished_in_memory",
    "default_timeout_s", "running_weight", "cpu_weight", "memory_weight", "slots", "drain_timeout_s",
    "aging_s_per_priority", "restart_grace_s", "retry_elsewhere_s", "short_task_s",
}
_AT_MOST = {"slots": 1024, "prefetch": 65536}  # what the coordinator accepts in a Register
_CHOICES = {"backend": ("sqlite", "postgresql"), "format": ("text", "json"), "level": LOG_LEVELS,
            "start_method": ("fork", "forkserver", "spawn")}
_ENDPOINTS = {"client_endpoint", "worker_endpoint"}
_OPTIONAL_ENDPOINTS = {"advertise_client_endpoint", "advertise_worker_endpoint"}


def _check_value(where: str, key: str, value: Any, hint: Any) -> Any:
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key} must be a list of strings, got {value!r} ({where})")
        return list(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not hint:
        raise ConfigError(f"{key} must be {expected[hint]}, got {value!r} ({where})")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r} ({where})")
    if key in _NON_NEGATIVE and value < 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r} ({where})")
    if key in _AT_MOST and value > _AT_MOST[key]:
        raise ConfigError(f"{key} must be <= {_AT_MOST[key]}, got {value!r} ({where})")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(_CHOICES[key])}, got {value!r} ({where})")
    if key in _ENDPOINTS or (key in _OPTIONAL_ENDPOINTS and value):
        check_endpoint(value, f"{key} ({where})")
    if key == "coordinator":
        check_endpoints(value, f"{key} ({where})")
    return value


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def is_loopback_host(host: str) -> bool:
    """True for names and addresses that never leave this machine: localhost, 127.0.0.0/8, ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def split_host_port(text: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT``, None if malformed.

    HOST is an IPv4 address, a DNS name or an IPv6 address in brackets (``[::1]``); PORT is
    0-65535.  Parsed whole, never prefix-matched: ZeroMQ reads ``tcp://A;B:P`` as "from
    source address A to B", so ``127.0.0.1;0.0.0.0`` must not pass for loopback.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    elif host.replace(".", "").isdigit():  # digits and dots: an IPv4 address or nothing
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None
    elif not _HOST_NAME.fullmatch(host) or len(host) > 253:
        return None
    return host, int(port)


def parse_endpoint(endpoint: str, what: str) -> tuple[str, int]:
    """(host, port) of a ZeroMQ TCP endpoint ``tcp://HOST:PORT`` (see :func:`split_host_port`).

    Raises ConfigError naming ``what`` otherwise.
    """
    address = split_host_port(endpoint.removeprefix("tcp://")) if endpoint.startswith("tcp://") else None
    if address is None:
        raise ConfigError(f"{what} must look like tcp://HOST:PORT (HOST an IP address, a name or [an IPv6 "
                          f"address], PORT 0-65535), got {endpoint!r}")
    return address


def check_endpoint(endpoint: str, what: str) -> str:
    """``endpoint`` if it is a ZeroMQ TCP endpoint ``tcp://HOST:PORT``; ConfigError naming ``what`` otherwise."""
    parse_endpoint(endpoint, what)
    return endpoint


MAX_COORDINATORS = 16
"""Most coordinators one list may name (a leader and its standbys)."""


def check_endpoints(text: str | list[str] | tuple[str, ...], what: str) -> list[str]:
    """The coordinators a client or worker may reach: one endpoint, or several separated by commas
    (a leader and its standbys, in any order); ConfigError naming ``what`` if any is malformed."""
    parts = [part.strip() for part in text.split(",")] if isinstance(text, str) else [str(part) for part in text]
    if not parts or any(not part for part in parts):
        raise ConfigError(f"{what} must be tcp://HOST:PORT, or several separated by commas, got {text!r}")
    if len(parts) > MAX_COORDINATORS:
        raise ConfigError(f"{what} names {len(parts)} coordinators; at most {MAX_COORDINATORS}")
    for part in parts:
        check_endpoint(part, what)
    return list(dict.fromkeys(parts))


def _build(cls: Any, data: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            raise ConfigError(
                f"unknown section [{name}] in {source}; expected one of: {', '.join(sorted(known))}"
            )
    sections = {}
    for name, section_data in data.items():
        section_cls = hints[name]
        where = f"{source} [{name}]"
        if not isinstance(section_data, dict):
            raise ConfigError(f"[{name}] must be a table, got {section_data!r} ({source})")
        section_hints = typing.get_type_hints(section_cls)
        values = {}
        for key, value in section_data.items():
            if key not in section_hints:
                raise ConfigError(
                    f"unknown key {key!r} in {where}; expected one of: {', '.join(sorted(section_hints))}"
                )
            values[key] = _check_value(where, key, value, section_hints[key])
        sections[name] = section_cls(**values)
    config = cls(**sections)
    _check_relations(config, source)
    return config


def _check_relations(config: Any, source: str) -> None:
    if isinstance(config, CoordinatorConfig):
        live = config.liveness
        if live.worker_timeout_s <= live.heartbeat_interval_s:
            raise ConfigError(
                f"worker_timeout_s ({live.worker_timeout_s}) must be greater than heartbeat_interval_s "
                f"({live.heartbeat_interval_s}) or every worker is lost between beats ({source} [liveness])"
            )
        if live.pause_threshold_s >= live.worker_timeout_s:
            raise ConfigError(
                f"pause_threshold_s ({live.pause_threshold_s}) must be below worker_timeout_s "
                f"({live.worker_timeout_s}), or a pause of the coordinator itself could convict healthy "
                f"workers ({source} [liveness])"
            )
        if not live.heartbeat_interval_s < live.suspect_after_s <= live.worker_timeout_s:
            raise ConfigError(
                f"suspect_after_s ({live.suspect_after_s}) must be above heartbeat_interval_s "
                f"({live.heartbeat_interval_s}) and at most worker_timeout_s ({live.worker_timeout_s}) "
                f"({source} [liveness])"
            )
        if config.breaker.failure_ratio >= 1.0:
            raise ConfigError(f"failure_ratio must be below 1.0 (a ratio of failed attempts), got "
                              f"{config.breaker.failure_ratio} ({source} [breaker])")
        if config.tasks.retry_backoff_cap_s < config.tasks.retry_backoff_base_s:
            raise ConfigError(f"retry_backoff_cap_s must be >= retry_backoff_base_s ({source} [tasks])")
        ends = config.endpoints
        _check_security(config, source)
        if config.journal.enabled and config.journal.backend == "postgresql":
            if not config.journal.resolved_dsn():
                raise ConfigError(f"backend = \"postgresql\" needs a dsn (a PostgreSQL connection string such as "
                                  f"\"host=db.example port=5432 dbname=actorsched user=actorsched\"), in [journal] "
                                  f"dsn or ${JOURNAL_DSN_ENV} ({source} [journal])")
            for name in ("client_endpoint", "worker_endpoint"):
                host, _ = parse_endpoint(getattr(ends, name), name)
                if host in ("0.0.0.0", "*", "[::]") and not getattr(ends, f"advertise_{name}"):
                    raise ConfigError(f"{name} binds every address ({host}); with standby coordinators set "
                                      f"advertise_{name} to the address other hosts reach it at "
                                      f"({source} [endpoints])")
        http_address(config.http.endpoint, f"{source} [http]", config.http.token_file)
        if ends.client_endpoint == ends.worker_endpoint and not ends.client_endpoint.endswith(":0"):
            raise ConfigError(f"client_endpoint and worker_endpoint must differ, both are "
                              f"{ends.client_endpoint!r}; port 0 picks a free port ({source} [endpoints])")
    if isinstance(config, WorkerConfig):
        conn = config.connection
        if bool(conn.server_public_key_file) != bool(conn.secret_key_file):
            raise ConfigError(f"server_public_key_file and secret_key_file go together for CURVE; set both or "
                              f"neither ({source} [connection])")
        if conn.reconnect_max_s < conn.reconnect_min_s:
            raise ConfigError(f"reconnect_max_s must be >= reconnect_min_s ({source} [connection])")


def _check_security(config: CoordinatorConfig, source: str) -> None:
    sec = config.security
    values = (sec.secret_key_file, sec.worker_keys_dir, sec.client_keys_dir)
    if any(values) and not all(values):
        raise ConfigError(f"secret_key_file, worker_keys_dir and client_keys_dir go together for CURVE; "
                          f"set all three or none ({source} [security])")
    for name in ("client_endpoint", "worker_endpoint"):
        endpoint = getattr(config.endpoints, name)
        host, _ = parse_endpoint(endpoint, f"{name} ({source} [endpoints])")
        if not sec.enabled and not is_loopback_host(host):
            raise ConfigError(
                f"{name} {endpoint!r} is not loopback, and binding beyond this machine requires CURVE keys: "
                f"set [security] secret_key_file, worker_keys_dir and client_keys_dir (make keys with "
                f"`actorsched keygen DIR NAME`), or bind 127.0.0.1 ({source} [endpoints])"
            )


HTTP_TOKEN_MIN_CHARS = 16
_HTTP_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")
MAKE_TOKEN = ("python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE && chmod 600 FILE")


def http_address(endpoint: str, where: str, token_file: str = "") -> tuple[str, int] | None:
    """(host, port) of the status page, None when off.

    Loopback without a token, as the page always was; any other address only with a
    ``token_file``, since everyone who can reach the port could otherwise read every task.
    """
    if not endpoint:
        return None
    address = split_host_port(endpoint)
    if address is None:
        raise ConfigError(f"endpoint must look like HOST:PORT, or \"\" to turn the page off, "
                          f"got {endpoint!r} ({where})")
    host, port = address
    if not is_loopback_host(host) and not token_file:
        raise ConfigError(f"endpoint {endpoint!r} is not loopback, and the status page beyond this machine needs "
                          f"a token: set [http] token_file to a file holding a random token (make one with "
                          f"`{MAKE_TOKEN}`), or bind 127.0.0.1 ({where})")
    return host, port


def read_http_token(token_file: str, where: str) -> str | None:
    """The token in ``token_file`` (surrounding whitespace dropped), None when no file is set.

    Refused with a ConfigError naming the key and the fix: a missing or unreadable file,
    and a token that is short or holds characters a header or cookie cannot carry as is.
    """
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"token_file {token_file!r} cannot be read ({reason}); make one with "
                          f"`{MAKE_TOKEN}`, or set token_file = \"\" and bind 127.0.0.1 ({where})") from None
    if len(token) < HTTP_TOKEN_MIN_CHARS or not _HTTP_TOKEN.fullmatch(token):
        raise ConfigError(f"token_file {token_file!r} must hold one token of at least {HTTP_TOKEN_MIN_CHARS} "
                          f"characters from A-Z a-z 0-9 . _ ~ + / = - (got {len(token)} characters); make one "
                          f"with `{MAKE_TOKEN}` ({where})")
    return token


def _load(cls: Any, path: str | Path | None) -> Any:
    if path is None:
        return cls()
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {source} does not exist; pass --config with an existing file "
                          f"or leave it out to use the defaults") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    return _build(cls, data, source)


def load_coordinator_config(path: str | Path | None) -> CoordinatorConfig:
    config: CoordinatorConfig = _load(CoordinatorConfig, path)
    return config


def load_worker_config(path: str | Path | None) -> WorkerConfig:
    config: WorkerConfig = _load(WorkerConfig, path)
    return config


def with_overrides(config: Any, section: str, source: str = "command line", **values: Any) -> Any:
    """A copy of ``config`` with ``section`` keys replaced (None values are skipped), validated."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return config
    current = getattr(config, section)
    hints = typing.get_type_hints(type(current))
    where = f"{source} [{section}]"
    for key in values:
        if key not in hints:
            raise ConfigError(f"unknown key {key!r} in {where}; expected one of: {', '.join(sorted(hints))}")
    checked = {k: _check_value(where, k, v, hints[k]) for k, v in values.items()}
    updated = dataclasses.replace(config, **{section: dataclasses.replace(current, **checked)})
    _check_relations(updated, source)
    return updated


def default_client_endpoint() -> str:
    """``$ACTORSCHED_COORDINATOR`` if set (one endpoint, or a list separated by commas), else the default
    client endpoint."""
    endpoint = os.environ.get(COORDINATOR_ENV) or DEFAULT_CLIENT_ENDPOINT
    what = COORDINATOR_ENV if COORDINATOR_ENV in os.environ else "endpoint"
    return ",".join(check_endpoints(endpoint, what))
