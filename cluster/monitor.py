"""``r1ray monitor``: Prometheus (and Grafana, when installed) for the Ray cluster on this machine.

Prometheus scrapes every Ray node listed in the session's service-discovery file
(``<ray temp dir>/session_latest/prom_metrics_service_discovery.json``), so it follows the
cluster as nodes come and go and as the head restarts. Grafana is provisioned with that
Prometheus, Ray's default dashboards (written by the head into its session) and r1ray's
``deploy/grafana/r1ray-dashboard.json``. Both listen on 127.0.0.1 unless ``--host`` says otherwise.

The Ray dashboard embeds Grafana and asks Prometheus only when its head process starts with
``RAY_PROMETHEUS_HOST`` / ``RAY_GRAFANA_HOST`` / ``RAY_GRAFANA_IFRAME_HOST`` set: ``r1ray monitor``
prints them, ``r1ray monitor --env`` prints only the ``export`` lines, and ``r1ray train`` (any
stage) sets them itself when it starts a local cluster while a monitor runs (``apply_dashboard_env``).
The servers are stopped by the PIDs recorded in ``<state dir>/monitor.json``: ``r1ray monitor --stop``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from cluster.errors import ConfigError

REPO_DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TEMPLATES = REPO_DEPLOY / "monitoring"
DASHBOARDS = REPO_DEPLOY / "grafana"
SD_FILE = "prom_metrics_service_discovery.json"
DEFAULT_STATE_DIR = Path.home() / ".r1ray" / "monitor"
STATE_FILE = "monitor.json"


@dataclass(kw_only=True)
class Server:
    """One started server: what it is, where it answers, and how to recognise its process later."""

    name: str
    pid: int
    url: str
    started_at: str
    """Field 22 of /proc/<pid>/stat at start: a reused PID has another start time, and is left alone."""


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def is_running(server: Server) -> bool:
    return _start_time(server.pid) == server.started_at


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def sd_file(ray_temp_dir: Path) -> Path:
    return ray_temp_dir / "session_latest" / SD_FILE


def prometheus_config(ray_temp_dir: Path, scrape_interval_s: int) -> dict:
    """deploy/monitoring/prometheus.yml, pointed at this cluster's temp dir, scraping every ``scrape_interval_s``."""
    config = yaml.safe_load((TEMPLATES / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"}
    (job,) = config["scrape_configs"]
    job["file_sd_configs"][0]["files"] = [str(sd_file(ray_temp_dir))]
    return config


def grafana_provisioning(prometheus_url: str, ray_temp_dir: Path) -> dict[str, dict]:
    """deploy/monitoring/grafana/provisioning/*, pointed at this Prometheus and these dashboard folders."""
    source = TEMPLATES / "grafana" / "provisioning"
    datasources = yaml.safe_load((source / "datasources" / "prometheus.yml").read_text())
    datasources["datasources"][0]["url"] = prometheus_url
    dashboards = yaml.safe_load((source / "dashboards" / "dashboards.yml").read_text())
    paths = {"Ray": ray_temp_dir / "session_latest" / "metrics" / "grafana" / "dashboards", "r1ray": DASHBOARDS}
    for provider in dashboards["providers"]:
        provider["options"]["path"] = str(paths[provider["name"]])
    return {"datasources/prometheus.yml": datasources, "dashboards/dashboards.yml": dashboards}


def find_prometheus(explicit: str | None) -> Path | None:
    """--prometheus, else `prometheus` on PATH, else the copy `make install` unpacks into .venv/prometheus."""
    if explicit:
        return Path(explicit)
    found = shutil.which("prometheus")
    if found:
        return Path(found)
    unpacked = Path(sys.prefix) / "prometheus" / "usr" / "bin" / "prometheus"
    return unpacked if unpacked.is_file() else None


def find_grafana(explicit: str | None) -> tuple[list[str], Path] | None:
    """The command that starts Grafana's server and its home path (``--grafana``: a Grafana release folder)."""
    homes = [Path(explicit)] if explicit else [Path("/usr/share/grafana")]
    for home in homes:
        if (home / "bin" / "grafana").is_file():
            return [str(home / "bin" / "grafana"), "server"], home
    if explicit:
        raise ConfigError(f"monitor error: --grafana {explicit}: no bin/grafana in that folder")
    for name, args in (("grafana", ["server"]), ("grafana-server", [])):
        found = shutil.which(name)
        if found and homes[0].is_dir():
            return [found, *args], homes[0]
    return None


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ConfigError(f"monitor error: {log.stem} exited with {proc.returncode}: {' | '.join(tail)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise ConfigError(f"monitor error: {url} did not answer in {timeout_s:.0f} s (see {log})")


def _launch(name: str, cmd: list[str], state_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = state_dir / f"{name}.log"
    with log.open("ab") as out:
        # Its own session: the server outlives this command, and `--stop` ends its whole process group.
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def start_prometheus(binary: Path, args: argparse.Namespace, state_dir: Path) -> Server:
    config = state_dir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(Path(args.ray_temp_dir), args.scrape_interval), sort_keys=False))
    cmd = [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={state_dir / 'prometheus-data'}",
        f"--web.listen-address={args.host}:{args.prometheus_port}",
    ]
    proc = _launch("prometheus", cmd, state_dir)
    url = f"http://{args.host}:{args.prometheus_port}"
    _wait_ready(proc, f"{url}/-/ready", state_dir / "prometheus.log")
    return Server(name="prometheus", pid=proc.pid, url=url, started_at=_start_time(proc.pid) or "")


def start_grafana(found: tuple[list[str], Path], prometheus_url: str, args, state_dir: Path) -> Server:
    cmd, home = found
    provisioning = state_dir / "grafana" / "provisioning"
    for name, tree in grafana_provisioning(prometheus_url, Path(args.ray_temp_dir)).items():
        (provisioning / name).parent.mkdir(parents=True, exist_ok=True)
        (provisioning / name).write_text(yaml.safe_dump(tree, sort_keys=False))
    env = os.environ | {
        "GF_PATHS_PROVISIONING": str(provisioning),
        "GF_PATHS_DATA": str(state_dir / "grafana" / "data"),
        "GF_PATHS_LOGS": str(state_dir / "grafana" / "logs"),
        "GF_SERVER_HTTP_ADDR": args.host,
        "GF_SERVER_HTTP_PORT": str(args.grafana_port),
        # The Ray dashboard shows Grafana panels in iframes, to anyone who reaches it: read-only viewers.
        "GF_SECURITY_ALLOW_EMBEDDING": "true",
        "GF_AUTH_ANONYMOUS_ENABLED": "true",
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
    }
    proc = _launch("grafana", [*cmd, f"--homepath={home}"], state_dir, env)
    url = f"http://{args.host}:{args.grafana_port}"
    _wait_ready(proc, f"{url}/api/health", state_dir / "grafana.log")
    return Server(name="grafana", pid=proc.pid, url=url, started_at=_start_time(proc.pid) or "")


def read_state(state_dir: Path) -> list[Server]:
    path = state_dir / STATE_FILE
    if not path.is_file():
        return []
    return [Server(**row) for row in json.loads(path.read_text())["servers"]]


def dashboard_env(servers: list[Server], iframe_host: str | None = None) -> dict[str, str]:
    """The variables the Ray head's dashboard reads at start to query Prometheus and embed Grafana."""
    urls = {s.name: s.url for s in servers}
    env = {"RAY_PROMETHEUS_HOST": urls["prometheus"], "RAY_PROMETHEUS_NAME": "Prometheus"}
    if "grafana" in urls:
        env |= {"RAY_GRAFANA_HOST": urls["grafana"], "RAY_GRAFANA_IFRAME_HOST": iframe_host or urls["grafana"]}
    return env


def apply_dashboard_env(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Before a stage starts a local Ray cluster: if a monitor runs, its head gets the dashboard variables
    (values already in the environment win)."""
    servers = [s for s in read_state(state_dir) if is_running(s)]
    if any(s.name == "prometheus" for s in servers):
        for key, value in dashboard_env(servers).items():
            os.environ.setdefault(key, value)


def stop(state_dir: Path, grace_s: float = 10.0) -> list[str]:
    """End the recorded servers (SIGTERM to the process group, SIGKILL after ``grace_s``); their names."""
    servers = [s for s in read_state(state_dir) if is_running(s)]
    for server in servers:
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(is_running(s) for s in servers) and time.monotonic() < deadline:
        time.sleep(0.2)
    for server in servers:
        if is_running(server):
            os.killpg(server.pid, signal.SIGKILL)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return [s.name for s in servers]


def start(args: argparse.Namespace) -> list[Server]:
    state_dir = Path(args.state_dir)
    running = [s for s in read_state(state_dir) if is_running(s)]
    if running:
        shown = ", ".join(f"{s.name} {s.url}" for s in running)
        raise ConfigError(f"monitor error: already running ({shown}); stop it with: r1ray monitor --stop")
    binary = find_prometheus(args.prometheus)
    if binary is None or not binary.is_file():
        raise ConfigError(
            "monitor error: prometheus not found: `make install` unpacks Debian's into .venv/prometheus, "
            "or install it (apt-get install prometheus), pass --prometheus PATH, or use "
            "deploy/monitoring/docker-compose.yml"
        )
    grafana = None if args.no_grafana else find_grafana(args.grafana)
    ports = [("--prometheus-port", args.prometheus_port)] + ([("--grafana-port", args.grafana_port)] if grafana else [])
    for flag, port in ports:
        if not _port_free(args.host, port):
            raise ConfigError(f"monitor error: {args.host}:{port} is in use; choose another with {flag}")
    state_dir.mkdir(parents=True, exist_ok=True)
    servers = [start_prometheus(binary, args, state_dir)]
    try:
        if grafana:
            servers.append(start_grafana(grafana, servers[0].url, args, state_dir))
    finally:
        (state_dir / STATE_FILE).write_text(json.dumps({"servers": [asdict(s) for s in servers]}, indent=1))
    return servers


def _report(servers: list[Server], args: argparse.Namespace) -> None:
    discovery = sd_file(Path(args.ray_temp_dir))
    for server in servers:
        print(f"{server.name}: {server.url} (pid {server.pid})")
    print(f"scraping the Ray nodes listed in {discovery} every {args.scrape_interval} s")
    if not discovery.is_file():
        print(
            f"  (no Ray head has written it yet: the nodes appear once one starts with --temp-dir={args.ray_temp_dir})"
        )
    if not any(s.name == "grafana" for s in servers):
        why = "--no-grafana" if args.no_grafana else "Grafana is not installed (pass --grafana FOLDER)"
        print(f"grafana: not started: {why}; deploy/monitoring/docker-compose.yml runs both with Docker")
    print("The Ray dashboard's Metrics page needs these in the environment of `ray start --head`")
    print("(a stage that starts its own local cluster, e.g. `r1ray train`, sets them itself):")
    for key, value in dashboard_env(servers, args.iframe_host).items():
        print(f"  export {key}={value}")
    print(
        "stop: r1ray monitor --stop"
        + ("" if args.state_dir == str(DEFAULT_STATE_DIR) else f" --state-dir {args.state_dir}")
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="start (or --stop) Prometheus and Grafana for the local Ray cluster")
    p.add_argument("--stop", action="store_true", help="stop the servers this command started")
    p.add_argument("--env", action="store_true", help="print the Ray dashboard's export lines of the running monitor")
    p.add_argument("--host", default="127.0.0.1", help="address both servers listen on (default: loopback)")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--grafana-port", type=int, default=3000)
    p.add_argument("--iframe-host", help="Grafana's address as your browser reaches it (a tunnel); default: its URL")
    p.add_argument("--ray-temp-dir", default="/tmp/ray", help="the Ray head's --temp-dir (default: /tmp/ray)")
    p.add_argument("--scrape-interval", type=int, default=5, help="seconds between scrapes (default: 5)")
    p.add_argument("--prometheus", help="path of the prometheus binary (default: PATH, then .venv/prometheus)")
    p.add_argument("--grafana", help="a Grafana release folder holding bin/grafana (default: /usr/share/grafana)")
    p.add_argument("--no-grafana", action="store_true", help="Prometheus only")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="config, data, logs and PIDs of the servers")


def run(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)
    if args.stop:
        stopped = stop(state_dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else "r1ray monitor: nothing was running")
        return 0
    if args.env:
        servers = [s for s in read_state(state_dir) if is_running(s)]
        if not servers:
            print("r1ray: monitor error: no monitor is running (start it with: r1ray monitor)", file=sys.stderr)
            return 2
        for key, value in dashboard_env(servers, args.iframe_host).items():
            print(f"export {key}={value}")
        return 0
    for flag, port in (("--prometheus-port", args.prometheus_port), ("--grafana-port", args.grafana_port)):
        if not 1 <= port <= 65535:
            print(f"r1ray: monitor error: {flag} {port} is not a TCP port (1-65535)", file=sys.stderr)
            return 2
    if args.scrape_interval < 1:
        print("r1ray: monitor error: --scrape-interval must be at least 1 s", file=sys.stderr)
        return 2
    try:
        servers = start(args)
    except ConfigError as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    _report(servers, args)
    return 0


def add_tensorboard_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tensorboard", help="serve a run's TensorBoard events (runs/<name>/tensorboard) on loopback")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/demo (or a folder of runs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=6006)


def tensorboard_command(run_dir: Path, host: str, port: int) -> list[str]:
    """The `tensorboard` command for a run folder (its ``tensorboard/`` events) or a folder of runs."""
    if not run_dir.is_dir():
        raise ConfigError(f"tensorboard error: {run_dir} is not a folder")
    logdir = run_dir / "tensorboard" if (run_dir / "tensorboard").is_dir() else run_dir
    if not any(logdir.rglob("events.out.tfevents.*")):
        raise ConfigError(f"tensorboard error: no TensorBoard events under {logdir} (has a step been logged?)")
    binary = Path(sys.executable).with_name("tensorboard")
    return [
        str(binary if binary.is_file() else "tensorboard"),
        f"--logdir={logdir}",
        f"--host={host}",
        f"--port={port}",
    ]


def run_tensorboard(args: argparse.Namespace) -> int:
    try:
        cmd = tensorboard_command(Path(args.run_dir), args.host, args.port)
    except ConfigError as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    print(f"TensorBoard: http://{args.host}:{args.port} ({cmd[1]})", flush=True)
    os.execvp(cmd[0], cmd)
