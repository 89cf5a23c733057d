"""Shared fixtures: real local clusters that are always torn down, even when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from actorsched.localcluster import LocalCluster, wait_until

__all__ = ["wait_until"]


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., LocalCluster]]:
    """``make_cluster(workers=2, slots=2, coordinator_args=[...], worker_args=[...])`` -> a started cluster.

    Logs and the journal go under the test's tmp_path; every process is stopped at teardown.
    """
    clusters: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        kwargs.setdefault("log_dir", str(tmp_path / f"cluster{len(clusters)}"))
        kwargs.setdefault("state_dir", str(tmp_path / f"cluster{len(clusters)}" / "state"))
        cluster = LocalCluster(**kwargs)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    """A coordinator with two workers of two slots each, fast failure detection."""
    return make_cluster(workers=2, slots=2, coordinator_args=["--worker-timeout", "2"])
