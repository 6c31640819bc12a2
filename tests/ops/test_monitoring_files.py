"""deploy/monitoring and the watching commands agree with each other and with Ray, without starting anything.

The docker compose file mounts files that exist where the provisioning expects them and keeps both
servers on loopback; the Grafana datasource carries the name and type Ray's dashboards look for;
`r1ray monitor` renders the provisioning for a cluster's temp dir; a live monitor's state makes a
stage's local head get the dashboard variables, a stale one (a reused PID) does not; `r1ray
tensorboard` finds a run's events or says in one line why not. (test_monitor.py runs the real
Prometheus against a real head; test_grafana_dashboard.py checks the dashboard's queries.)
Run: `pytest tests/ops/test_monitoring_files.py -v`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from cluster import monitor

REPO_ROOT = Path(__file__).resolve().parents[2]
MONITORING = REPO_ROOT / "deploy" / "monitoring"
PROVISIONING = MONITORING / "grafana" / "provisioning"


def compose() -> dict:
    return yaml.safe_load((MONITORING / "docker-compose.yml").read_text())


def mounts(service: str) -> dict[str, str]:
    """Container path -> host path (resolved against the compose file's folder) of a service's bind mounts."""
    found = {}
    for volume in compose()["services"][service]["volumes"]:
        source, target = volume.split(":")[:2]
        found[target] = str((MONITORING / source).resolve()) if source.startswith(".") else source
    return found


def test_compose_mounts_what_the_provisioning_names():
    prometheus, grafana = mounts("prometheus"), mounts("grafana")
    command = compose()["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(MONITORING / "prometheus.yml")
    assert grafana["/etc/grafana/provisioning"] == str(PROVISIONING)
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yml").read_text())["providers"]
    paths = {p["name"]: p["options"]["path"] for p in providers}
    assert (Path(grafana[paths["r1ray"]]) / "r1ray-dashboard.json").is_file()
    # Ray's dashboards and service-discovery file sit under /tmp/ray, mounted at the same path (absolute symlinks).
    assert paths["Ray"].startswith("/tmp/ray/") and grafana["/tmp/ray"] == prometheus["/tmp/ray"] == "/tmp/ray"
    for path in prometheus.values():
        assert Path(path).exists() or path == "/tmp/ray", path


def test_compose_servers_listen_on_loopback_and_grafana_is_read_only():
    services = compose()["services"]
    assert "--web.listen-address=127.0.0.1:9090" in services["prometheus"]["command"]
    env = services["grafana"]["environment"]
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer" and env["GF_SECURITY_ALLOW_EMBEDDING"] == "true"
    assert all(s["network_mode"] == "host" and "ports" not in s for s in services.values())


def test_datasource_is_the_one_rays_dashboards_and_the_ray_dashboard_look_for():
    from ray.dashboard.modules.metrics.grafana_dashboard_factory import generate_default_grafana_dashboard
    from ray.dashboard.modules.metrics.metrics_head import DEFAULT_PROMETHEUS_NAME

    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["name"] == DEFAULT_PROMETHEUS_NAME and source["url"] == "http://127.0.0.1:9090"
    ray_board = json.loads(generate_default_grafana_dashboard()[0])
    r1ray_board = json.loads((REPO_ROOT / "deploy" / "grafana" / "r1ray-dashboard.json").read_text())
    for board in (ray_board, r1ray_board):
        (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
        assert variable["type"] == "datasource" and variable["query"] == source["type"] == "prometheus"


def test_monitor_renders_provisioning_for_a_clusters_temp_dir(tmp_path):
    rendered = monitor.grafana_provisioning("http://127.0.0.1:19090", tmp_path / "ray")
    (source,) = rendered["datasources/prometheus.yml"]["datasources"]
    assert source["url"] == "http://127.0.0.1:19090"
    paths = {p["name"]: Path(p["options"]["path"]) for p in rendered["dashboards/dashboards.yml"]["providers"]}
    assert paths["Ray"] == tmp_path / "ray" / "session_latest" / "metrics" / "grafana" / "dashboards"
    assert (paths["r1ray"] / "r1ray-dashboard.json").is_file()
    config = monitor.prometheus_config(tmp_path / "ray", 3)
    assert config["global"]["scrape_interval"] == "3s"
    assert config["scrape_configs"][0]["file_sd_configs"][0]["files"] == [str(monitor.sd_file(tmp_path / "ray"))]


def write_state(state_dir: Path, server: monitor.Server) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / monitor.STATE_FILE).write_text(json.dumps({"servers": [asdict(server)]}))


def test_a_running_monitor_gives_a_local_head_the_dashboard_env(tmp_path, monkeypatch):
    for key in ("RAY_PROMETHEUS_HOST", "RAY_PROMETHEUS_NAME", "RAY_GRAFANA_HOST", "RAY_GRAFANA_IFRAME_HOST"):
        monkeypatch.delenv(key, raising=False)
    me = os.getpid()
    live = monitor.Server(name="prometheus", pid=me, url="http://127.0.0.1:19090", started_at=monitor._start_time(me))
    write_state(tmp_path / "live", live)
    monitor.apply_dashboard_env(tmp_path / "live")
    assert os.environ["RAY_PROMETHEUS_HOST"] == "http://127.0.0.1:19090"
    assert "RAY_GRAFANA_HOST" not in os.environ  # no Grafana: nothing to embed

    monkeypatch.delenv("RAY_PROMETHEUS_HOST")
    write_state(tmp_path / "stale", monitor.Server(name="prometheus", pid=me, url=live.url, started_at="1"))
    monitor.apply_dashboard_env(tmp_path / "stale")
    assert "RAY_PROMETHEUS_HOST" not in os.environ
    assert monitor.stop(tmp_path / "stale") == []  # a reused PID is never signalled


def test_dashboard_env_embeds_grafana_at_the_browsers_address():
    servers = [
        monitor.Server(name="prometheus", pid=1, url="http://127.0.0.1:9090", started_at="0"),
        monitor.Server(name="grafana", pid=2, url="http://127.0.0.1:3000", started_at="0"),
    ]
    env = monitor.dashboard_env(servers, iframe_host="http://localhost:13000")
    assert env == {
        "RAY_PROMETHEUS_HOST": "http://127.0.0.1:9090",
        "RAY_PROMETHEUS_NAME": "Prometheus",
        "RAY_GRAFANA_HOST": "http://127.0.0.1:3000",
        "RAY_GRAFANA_IFRAME_HOST": "http://localhost:13000",
    }


def test_tensorboard_serves_a_runs_events_on_loopback(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "demo"
    with SummaryWriter(str(run / "tensorboard")) as writer:
        writer.add_scalar("reward/mean", 0.5, 1)
    cmd = monitor.tensorboard_command(run, "127.0.0.1", 6006)
    assert cmd[1:] == [f"--logdir={run / 'tensorboard'}", "--host=127.0.0.1", "--port=6006"]
    assert Path(cmd[0]).name == "tensorboard"


@pytest.mark.parametrize(("make", "message"), [(False, "is not a folder"), (True, "no TensorBoard events under")])
def test_tensorboard_without_events_is_one_line(tmp_path, make, message):
    run = tmp_path / "empty"
    if make:
        run.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "cluster", "tensorboard", str(run)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_heads_start_with_the_env_of_the_monitor_they_run(name):
    config = yaml.safe_load((REPO_ROOT / "deploy" / "cluster" / name).read_text())
    start = " ".join(config["head_start_ray_commands"])
    defaults = [
        monitor.Server(name="prometheus", pid=0, url="http://127.0.0.1:9090", started_at=""),
        monitor.Server(name="grafana", pid=0, url="http://127.0.0.1:3000", started_at=""),
    ]
    head = next(cmd for cmd in config["head_start_ray_commands"] if "ray start --head" in cmd)
    for key, value in monitor.dashboard_env(defaults).items():
        assert key == "RAY_PROMETHEUS_NAME" or f"{key}={value}" in head, key
    assert start.index("ray start --head") < start.index("r1ray monitor --prometheus")
    setup = " ".join(config["head_setup_commands"])
    assert "-C ~/monitoring/prometheus" in setup and "-C ~/monitoring/grafana" in setup


def test_kuberay_head_names_the_services_the_monitors_feed():
    rayjob = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "cluster" / "kuberay-rayjob.yaml").read_text()))
    (job,) = [d for d in rayjob if d["kind"] == "RayJob"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head["env"]}
    monitors = list(yaml.safe_load_all((MONITORING / "kuberay-monitors.yaml").read_text()))
    (namespace,) = {m["metadata"]["namespace"] for m in monitors}
    release = {m["metadata"]["labels"]["release"] for m in monitors}.pop()
    assert env["RAY_PROMETHEUS_HOST"] == f"http://{release}-kube-prometheus-prometheus.{namespace}.svc:9090"
    assert env["RAY_GRAFANA_HOST"] == f"http://{release}-grafana.{namespace}.svc:80"
    assert all(m["spec"]["namespaceSelector"]["matchNames"] == [job["metadata"]["namespace"]] for m in monitors)
    assert {"containerPort": 8080, "name": "metrics"} in head["ports"]
    values = yaml.safe_load((MONITORING / "kube-prometheus-stack-values.yaml").read_text())
    assert values["grafana"]["grafana.ini"]["security"]["allow_embedding"] is True
