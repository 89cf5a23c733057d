"""Running ``ip`` for tests that make network namespaces (tests/chaos)."""

from __future__ import annotations

import subprocess


def ip(*args: str) -> None:
    """``ip ARGS...``, raising CalledProcessError if it fails; bounded in time."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
