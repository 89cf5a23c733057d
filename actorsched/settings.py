"""The settings the pure cores read: frozen dataclasses only, no files, no environment.

:mod:`actorsched.config` loads them from TOML (and re-exports them); the cores in
:mod:`actorsched.core` import them from here so that importing a core never imports
a loader that touches files or the OS (``tests/unit/test_core_purity.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    heartbeat_interval_s: float = 1.0
    suspect_after_s: float = 5.0
    worker_timeout_s: float = 15.0
    scan_interval_s: float = 5.0
    pause_threshold_s: float = 3.0


@dataclass(frozen=True, slots=True)
class TasksConfig:
    default_timeout_s: float = 0.0
    max_attempts: int = 4
    retry_backoff_base_s: float = 0.1
    retry_backoff_cap_s: float = 5.0
    max_pending_tasks: int = 1_000_000
    max_worker_deaths: int = 3
    restart_grace_s: float = 3.0
    short_task_s: float = 0.05
    max_pending_per_client: int = 250_000
    max_pending_bytes: int = 1 << 30
    start_timeout_s: float = 30.0
    finished_in_memory: int = 20_000


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    running_weight: float = 1.0
    cpu_weight: float = 0.5
    memory_weight: float = 0.25
    max_assign_batch: int = 256
    aging_s_per_priority: float = 60.0
    retry_elsewhere_s: float = 2.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    enabled: bool = True
    window_s: float = 60.0
    min_attempts: int = 10
    failure_ratio: float = 0.5
    open_s: float = 30.0
