"""Log set-up for the coordinator and the worker: plain text lines, or one JSON object per line.

``[logging] format = "json"`` writes each record as a JSON object with ``ts`` (ISO 8601,
UTC), ``level``, ``logger``, ``pid``, ``message`` and, for lines about a task, the
fields its message carries as ``key=value`` pairs (``task``, ``attempt``, ``worker``,
``error`` ...), so a log pipeline can filter by task id without parsing text.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys

FORMATS = ("text", "json")
_PAIR = re.compile(r"(\w+)=(\"[^\"]*\"|\S+)")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "pid": record.process, "message": message,
        }
        for key, value in _PAIR.findall(message):
            entry.setdefault(key, value.strip('"'))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def set_up(level: str, form: str, text_format: str) -> None:
    """Root logging to stderr at ``level``, as text (``text_format``) or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
