"""Issue 9 #10 (the CLI's part): a client whose CURVE key is refused is told to check its keys."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from actorsched.localcluster import ROOT, LocalCluster


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "actorsched.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_a_cli_client_with_a_key_the_coordinator_refuses_is_told_to_check_its_keys(
        keys: Path, make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(workers=0, coordinator_args=["--config", str(keys / "coordinator.toml")])
    server_key = str(keys / "server" / "coordinator.key")
    common = ["--coordinator", cluster.client_endpoint, "--server-key", server_key, "--connect-timeout", "1"]

    admitted = cli("stats", *common, "--key", str(keys / "clients" / "c.key_secret"))
    assert admitted.returncode == 0, admitted.stderr

    rogue = str(keys / "rogue" / "r.key_secret")
    refused = cli("stats", *common, "--key", rogue)
    assert refused.returncode == 2
    assert rogue in refused.stderr and "client_keys_dir" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_cli_client_without_keys_pointed_beyond_loopback_is_told_it_needs_them(tmp_path: Path) -> None:
    finished = cli("stats", "--coordinator", "tcp://192.0.2.1:7700", "--connect-timeout", "1")  # TEST-NET-1
    assert finished.returncode == 2
    assert "--server-key" in finished.stderr and "CURVE" in finished.stderr
