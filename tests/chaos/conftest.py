"""Shared fixtures of the chaos tests: a network namespace joined to this one by a veth pair."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from netns import ip

SUBNET = "10.213.{}.{}"


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str, str]]:
    """(namespace, host-side veth, host address, namespace address); removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (`ip`)")
    tag = os.getpid() % 250 + 1
    ns, host_veth, ns_veth = f"astest{tag}", f"ash{tag}", f"asn{tag}"
    host_addr, ns_addr = SUBNET.format(tag, 1), SUBNET.format(tag, 2)
    try:
        ip("netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        ip("link", "add", host_veth, "type", "veth", "peer", "name", ns_veth)
        ip("link", "set", ns_veth, "netns", ns)
        ip("addr", "add", f"{host_addr}/30", "dev", host_veth)
        ip("link", "set", host_veth, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_addr}/30", "dev", ns_veth)
        ip("netns", "exec", ns, "ip", "link", "set", ns_veth, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_veth, host_addr, ns_addr
    finally:
        subprocess.run(["ip", "link", "del", host_veth], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
