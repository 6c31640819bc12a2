"""Fixtures for the operations tests: local Ray heads that are started and stopped by handle.

Each head runs `ray start --head --block` in its own session (process group) on 127.0.0.1, on free
non-default ports, with its own --temp-dir and an explicit RAY_AUTH_MODE. Every process it starts
inherits a unique R1RAY_OPS_TAG environment variable; teardown kills the head's process group and
then every process that still carries the tag (Ray's worker processes and the fake multinode
provider's raylets leave that group), so nothing survives a failed test. Other people's Ray
processes on the machine are never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
TAG_VAR = "R1RAY_OPS_TAG"


def free_port(low: int = 0, high: int = 0) -> int:
    """A TCP port free on 127.0.0.1 right now: the first in [low, high], or any if no range is given."""
    candidates = range(low, high + 1) if low else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port in {low}-{high}")


def base_env(auth_mode: str, home: Path) -> dict[str, str]:
    """The environment for a Ray process of these tests: loopback only, explicit auth mode, no stats."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AUTOSCALER_"))}
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE=auth_mode,
        RAY_USAGE_STATS_ENABLED="0",
        # Makes every Ray process that resolves "its own IP" pick 127.0.0.1 instead of the machine's
        # outward address: the drivers and the fake worker nodes stay on loopback with the head.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    return env


@dataclass
class RayHead:
    """A running `ray start --head --block` and what is needed to reach and stop it."""

    proc: subprocess.Popen
    tag: str
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    metrics_url: str
    env: dict[str, str]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def tagged_pids(self) -> list[int]:
        """Live (non-zombie) processes on this machine that carry this head's tag."""
        needle = f"{TAG_VAR}={self.tag}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Kill the head's process group, then every tagged straggler (workers run in their own groups)."""
        # SIGTERM makes Ray 2.60 drain the node for up to 30 s; these throwaway clusters need no drain.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while (pids := self.tagged_pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)


def wait_for_dashboard(url: str, timeout_s: float = 60.0) -> None:
    """Block until the dashboard answers HTTP at all (any status counts: auth may refuse us)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dashboard at {url} did not answer in {timeout_s} s")


class HeadExited(RuntimeError):
    """`ray start` gave up before the head was up."""


def _wait_for_head(head: RayHead, timeout_s: float) -> None:
    """Block until the head's `ray start` printed its success line (or died, or timed out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.proc.poll() is not None:
            raise HeadExited(f"ray start exited with {head.proc.returncode}:\n{head.log_tail()}")
        if "Ray runtime started" in head.log_path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"ray start did not come up in {timeout_s} s:\n{head.log_tail()}")


def _launch_head(
    home: Path,
    auth_mode: str,
    extra_env: dict[str, str],
    extra_args: list[str],
    include_dashboard: bool,
    before_start: Callable[[str], object] | None,
) -> RayHead:
    # Ray's unix socket paths must stay short: keep the temp dir directly under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="r1ops-", dir="/tmp"))
    tag = uuid.uuid4().hex
    gcs_port = free_port(6500, 6600)
    dashboard_port = free_port(8350, 8450)
    metrics_port = free_port()
    env = base_env(auth_mode, home) | {TAG_VAR: tag} | extra_env
    cmd = [
        str(RAY_BIN), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--temp-dir={temp_dir}",
        f"--include-dashboard={str(include_dashboard).lower()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={metrics_port}",
        "--min-worker-port=0", "--max-worker-port=0",
        "--num-cpus=1",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        *extra_args,
    ]  # fmt: skip
    if before_start:
        before_start(f"127.0.0.1:{gcs_port}")
    log_path = temp_dir / "ray-start.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return RayHead(
        proc=proc,
        tag=tag,
        temp_dir=temp_dir,
        gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        env=env,
        log_path=log_path,
    )


@pytest.fixture(scope="module")
def ray_head_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RayHead]]:
    """Start local Ray heads with `start(...)`; all are stopped when the module's tests end, pass or fail."""
    heads: list[RayHead] = []

    def start(
        *,
        auth_mode: str = "disabled",
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        include_dashboard: bool = True,
        before_start: Callable[[str], object] | None = None,
        startup_timeout_s: float = 120.0,
        attempts: int = 2,
    ) -> RayHead:
        """`before_start(gcs_address)` runs once the ports are chosen, e.g. to write an autoscaling config."""
        home = tmp_path_factory.mktemp("home")
        for attempt in range(1, attempts + 1):
            head = _launch_head(home, auth_mode, extra_env or {}, extra_args or [], include_dashboard, before_start)
            heads.append(head)
            try:
                _wait_for_head(head, startup_timeout_s)
                break
            except HeadExited:
                # Ray 2.60 gives its raylet a fixed 30 s to register; on a loaded machine it can miss
                # that. A fresh head (new ports, new temp dir) usually makes it.
                head.stop()
                if attempt == attempts:
                    raise
        if include_dashboard:
            wait_for_dashboard(head.dashboard_url)
        return head

    yield start

    for head in heads:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    # stop() already killed the stragglers; this catches a leak that even SIGKILL could not end.
    assert not [pid for head in heads for pid in head.tagged_pids()], "Ray processes outlived the test"


@pytest.fixture
def run_ops_script() -> Callable[..., subprocess.CompletedProcess]:
    """Run a helper script from tests/ops in a fresh interpreter (a Ray client keeps process-global state)."""

    def run(script: str, env: dict[str, str], args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(Path(__file__).with_name(script)), *args],
            env=env | {"PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO_ROOT,
        )

    return run
