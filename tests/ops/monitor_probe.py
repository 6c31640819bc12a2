"""Helper for test_monitor.py: a short run's metrics, read back through Prometheus's HTTP query API.

Run as `python monitor_probe.py <gcs address> <prometheus url> <run dir> <timeout s>`. It joins the
cluster and logs a few steps through r1ray's own MetricsLogger (metrics.jsonl, TensorBoard and the
Ray gauges, as a stage does), then, while still connected (a driver's gauges leave the node's
export when it exits), asks Prometheus until every r1ray series is there and evaluates each panel
query of deploy/grafana/r1ray-dashboard.json. Prints one JSON line: the series found and their
values, the number of series each panel query returns, and the Ray scrape targets Prometheus sees.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import ray

from cluster.runtime.metrics import RAY_GAUGES, TIMEOUT_COUNTER, MetricsLogger

RUN = "monitor-probe"
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "r1ray-dashboard.json"


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def row(step: int) -> dict[str, float]:
    """A step's metrics.jsonl row: every key the logger exports, with a value that tells the step."""
    values = {key: step + i / 100 for i, key in enumerate(RAY_GAUGES)}
    return {"step": step, **values, "reward/timeouts": 1}


def panel_queries() -> list[str]:
    # Grafana fills these variables in; Prometheus gets what a dashboard showing every run would send.
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    return [e.replace("$__rate_interval", "1m").replace("$run", ".*") for e in exprs]


def main(address: str, prometheus: str, run_dir: Path, timeout_s: float) -> dict:
    ray.init(address=address, log_to_driver=False)
    log = MetricsLogger(run_dir, RUN)
    wanted = {f"ray_{name}" for name in [*RAY_GAUGES.values(), TIMEOUT_COUNTER]}
    series: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    step = 0
    while time.monotonic() < deadline:
        step += 1
        if step <= 3:
            log.log(row(step))
        found = query(prometheus, f'{{__name__=~"ray_r1ray_.+", run="{RUN}"}}')
        series = {s["metric"]["__name__"]: float(s["value"][1]) for s in found}
        if wanted <= set(series) and series["ray_r1ray_policy_version"] == row(3)["policy_version"]:
            break
        time.sleep(1.0)
    # A panel over increase() needs two scrapes of its counter: ask until each panel has data (or time is up).
    panel_deadline = max(deadline, time.monotonic() + 15)
    while True:
        panels = {expr: len(query(prometheus, expr)) for expr in panel_queries()}
        if all(panels.values()) or time.monotonic() >= panel_deadline:
            break
        time.sleep(1.0)
    targets = [s["metric"]["instance"] for s in query(prometheus, 'up{job="ray"} == 1')]
    log.close()
    return {"series": series, "panels": panels, "targets": targets, "steps_logged": min(step, 3)}


if __name__ == "__main__":
    address, prometheus, run_dir, timeout_s = sys.argv[1:5]
    print(json.dumps(main(address, prometheus, Path(run_dir), float(timeout_s))))
