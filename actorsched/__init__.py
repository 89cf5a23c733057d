"""actorsched: a distributed task scheduler built on actors, ZeroMQ and a SQLite journal."""

from __future__ import annotations

from actorsched.errors import (
    ActorschedError,
    ConfigError,
    ConnectionFailed,
    InvalidTask,
    ProtocolError,
    QueueFull,
    SubmitRejected,
    TaskFailed,
    TaskNotFound,
    Timeout,
)

__all__ = [
    "ActorschedError", "ConfigError", "ConnectionFailed", "InvalidTask", "ProtocolError", "QueueFull",
    "SubmitRejected",
    "TaskFailed", "TaskNotFound", "Timeout", "Client", "TaskHandle", "ref",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The client pulls in zmq; import it lazily so `import actorsched.tasks` in a
    # worker's child process stays light.
    if name in ("Client", "TaskHandle", "ref"):
        from actorsched import client

        return getattr(client, name)
    raise AttributeError(name)
