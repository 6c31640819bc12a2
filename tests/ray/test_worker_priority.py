"""A local cluster that r1ray starts runs its actors at the driver's priority, not Ray's default nice 15."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from cluster.runtime.ray_cluster import WORKER_NICENESS_ENV, workers_at_driver_priority

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import os, ray
from cluster.config import load_config
from cluster.runtime.ray_cluster import start_ray

start_ray(load_config(None, ["cluster.dashboard_port={port}", "cluster.num_cpus=2"]))

@ray.remote(num_cpus=1)
class Probe:
    def nice(self):
        return os.getpriority(os.PRIO_PROCESS, 0)

print("NICE", ray.get(Probe.remote().nice.remote()), flush=True)
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _actor_niceness(env_extra: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    env |= {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)} | env_extra
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(port=_free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("NICE ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-2000:]
    return int(lines[0].split()[1])


def test_actors_of_a_local_cluster_run_at_nice_0():
    assert _actor_niceness({}) == 0


def test_a_niceness_the_user_set_is_kept(monkeypatch):
    """Ray gives the workers what ``RAY_worker_niceness`` says (the real cluster above); r1ray sets it only
    where the user did not."""
    monkeypatch.setenv(WORKER_NICENESS_ENV, "7")
    workers_at_driver_priority()
    assert os.environ[WORKER_NICENESS_ENV] == "7"
    monkeypatch.delenv(WORKER_NICENESS_ENV)
    workers_at_driver_priority()
    assert os.environ[WORKER_NICENESS_ENV] == "0"
