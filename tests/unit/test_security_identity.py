"""Which CURVE key owns a worker id: the rule the coordinator applies to every Register."""

from __future__ import annotations

from actorsched.security import worker_id_owner

KEYS = ["worker", "gpu", "gpu-a100"]


def test_a_key_owns_its_name_and_its_name_with_a_suffix() -> None:
    assert worker_id_owner("worker", KEYS) == "worker"
    assert worker_id_owner("worker-17", KEYS) == "worker"
    assert worker_id_owner("gpu-3", KEYS) == "gpu"


def test_the_longest_key_name_wins_so_no_key_poses_as_another_fleet() -> None:
    assert worker_id_owner("gpu-a100-1", KEYS) == "gpu-a100"  # not "gpu"
    assert worker_id_owner("gpu-a100", KEYS) == "gpu-a100"


def test_an_id_no_key_names_has_no_owner() -> None:
    assert worker_id_owner("workers-1", KEYS) is None  # "worker" needs a dash after it
    assert worker_id_owner("cpu-1", KEYS) is None
    assert worker_id_owner("gpu", []) is None
