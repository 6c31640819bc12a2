"""Joining or starting the Ray cluster a run uses."""

from __future__ import annotations

import os

import numpy as np
import ray

from cluster.config import RunConfig
from cluster.runtime.placement import required_cpus

WORKER_NICENESS_ENV = "RAY_worker_niceness"


def workers_at_driver_priority() -> None:
    """Ray starts its worker processes at nice 15, under its own daemons; here the workers are the workload, and
    every wake-up of a daemon stalled an actor's OpenMP threads (the learner and the engine ran 5-10% slower in an
    actor than the same code in the driver). A local cluster started after this runs them at nice 0, unless the
    user set ``RAY_worker_niceness``."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")


def start_ray(cfg: RunConfig) -> None:
    """Join the configured cluster (or RAY_ADDRESS, as under ``ray job submit``), else start a local one."""
    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    workers_at_driver_priority()
    context = ray.init(
        address="local",
        num_cpus=cfg.cluster.num_cpus or max(os.cpu_count() or 1, int(np.ceil(required_cpus(cfg)))),
        include_dashboard=True,
        dashboard_host=cfg.cluster.dashboard_host,
        dashboard_port=cfg.cluster.dashboard_port,
    )
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
