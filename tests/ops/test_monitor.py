"""`r1ray monitor` gives a running Ray cluster a Prometheus that holds r1ray's metrics.

A local Ray head starts (dashboard on, so it writes the session's service-discovery file) with the
environment `r1ray monitor --env` prints; `r1ray monitor` then starts Debian's Prometheus binary on
127.0.0.1 for that head's temp dir, a short run logs three steps through MetricsLogger, and
Prometheus's HTTP query API must return every r1ray series with the last step's values, every
panel query of the Grafana dashboard must return data, and the Ray dashboard must report
Prometheus healthy. `r1ray monitor --stop` then ends it by PID. Without a Prometheus binary
(`make prometheus` unpacks Debian's into .venv/prometheus) the test skips and says why.
Run: `pytest tests/ops/test_monitor.py -v`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from cluster.monitor import find_prometheus, grafana_provisioning, is_running, read_state
from cluster.runtime.metrics import RAY_GAUGES, TIMEOUT_COUNTER

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def r1ray(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args],
        env=env | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


@pytest.fixture
def prometheus_binary() -> Path:
    found = find_prometheus(None)
    if found is None:
        pytest.skip("no prometheus binary: `make prometheus` unpacks Debian's package into .venv/prometheus")
    return found


@pytest.fixture
def monitor_state(tmp_path: Path):
    state = tmp_path / "monitor"
    yield state
    from cluster.monitor import stop

    stop(state)  # whatever the test did, its Prometheus does not outlive it


def test_prometheus_finds_r1ray_metrics_of_a_short_run(
    ray_head_factory, run_ops_script, prometheus_binary, monitor_state, tmp_path
):
    port = free_port()
    prometheus_url = f"http://127.0.0.1:{port}"
    # The dashboard reads these when the head starts; they must match what the monitor prints.
    dashboard_env = {"RAY_PROMETHEUS_HOST": prometheus_url, "RAY_PROMETHEUS_NAME": "Prometheus"}
    head = ray_head_factory(extra_env={"RAY_metrics_report_interval_ms": "1000", **dashboard_env})
    flags = ["--state-dir", str(monitor_state), "--ray-temp-dir", str(head.temp_dir), "--prometheus-port", str(port)]

    started = r1ray(head.env, "monitor", *flags, "--scrape-interval", "1", "--no-grafana")
    assert started.returncode == 0, started.stderr
    assert f"prometheus: {prometheus_url}" in started.stdout
    assert f"export RAY_PROMETHEUS_HOST={prometheus_url}" in started.stdout
    env_lines = r1ray(head.env, "monitor", "--env", "--state-dir", str(monitor_state)).stdout.splitlines()
    assert env_lines == [f"export {k}={v}" for k, v in dashboard_env.items()]
    again = r1ray(head.env, "monitor", *flags, "--no-grafana")
    assert again.returncode == 2 and "already running" in again.stderr

    result = run_ops_script(
        "monitor_probe.py", head.env, [head.gcs_address, prometheus_url, str(tmp_path), "45"], timeout_s=90
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    print("series Prometheus returned:", json.dumps(found["series"], indent=1))
    assert set(found["series"]) == {f"ray_{name}" for name in [*RAY_GAUGES.values(), TIMEOUT_COUNTER]}
    last = {key: 3 + i / 100 for i, key in enumerate(RAY_GAUGES)}
    assert found["series"]["ray_r1ray_reward_mean"] == pytest.approx(last["reward/mean"])
    assert found["series"]["ray_r1ray_kl"] == pytest.approx(last["kl"])
    assert found["series"]["ray_r1ray_reward_timeouts_total"] == pytest.approx(3.0)
    assert all(count >= 1 for count in found["panels"].values()), found["panels"]
    assert found["targets"] and all(t.startswith("127.0.0.1:") for t in found["targets"]), found["targets"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3

    with urllib.request.urlopen(f"{head.dashboard_url}/api/prometheus_health", timeout=10) as response:
        assert response.status == 200 and "prometheus running" in response.read().decode()
    # Grafana's provisioning names the folder where this head really wrote Ray's default dashboards.
    providers = grafana_provisioning(prometheus_url, head.temp_dir)["dashboards/dashboards.yml"]["providers"]
    ray_folder = Path(next(p["options"]["path"] for p in providers if p["name"] == "Ray"))
    assert (ray_folder / "default_grafana_dashboard.json").is_file(), sorted(ray_folder.parent.rglob("*"))

    (server,) = read_state(monitor_state)
    stopped = r1ray(head.env, "monitor", "--stop", "--state-dir", str(monitor_state))
    assert stopped.returncode == 0 and "stopped: prometheus" in stopped.stdout
    assert not is_running(server)
    assert not (monitor_state / "monitor.json").exists()


def test_rendered_prometheus_config_passes_promtool(prometheus_binary, tmp_path):
    from cluster.monitor import prometheus_config

    promtool = prometheus_binary.with_name("promtool")
    if not promtool.is_file():
        pytest.skip(f"no promtool beside {prometheus_binary}")
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(prometheus_config(tmp_path / "ray", 2)))
    for config in (rendered, REPO_ROOT / "deploy" / "monitoring" / "prometheus.yml"):
        checked = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{tmp_path}/ray/session_latest/prom_metrics_service_discovery.json" in rendered.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prometheus-port", "0"], "--prometheus-port 0 is not a TCP port"),
        (["--scrape-interval", "0"], "--scrape-interval must be at least 1 s"),
        (["--prometheus", "/nonexistent/prometheus"], "prometheus not found"),
        (["--env"], "no monitor is running"),
    ],
)
def test_bad_monitor_input_is_one_line(args, message, tmp_path):
    result = r1ray(dict(os.environ), "monitor", "--state-dir", str(tmp_path / "state"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
