"""The Grafana dashboard plots every metric r1ray emits, under the name Ray really exports it by.

The metric names come from cluster/runtime/metrics.py (the code that emits them), so a renamed gauge
fails here. The `ray`-marked test starts a local head, emits the metrics through
ray.util.metrics and scrapes the node's Prometheus endpoint, which proves the `ray_` prefix and
the counter's name. Run: `pytest tests/ops/test_grafana_dashboard.py -v`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster.runtime.metrics import RAY_GAUGES, TIMEOUT_COUNTER

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "r1ray-dashboard.json"
EMITTED = [*RAY_GAUGES.values(), TIMEOUT_COUNTER]


def prometheus_name(metric: str) -> str:
    return f"ray_{metric}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_metrics(panel: dict) -> set[str]:
    return {name for target in panel["targets"] for name in re.findall(r"\bray_r1ray_\w+", target["expr"])}


def test_one_panel_per_metric():
    panels = dashboard()["panels"]
    per_panel = [panel_metrics(panel) for panel in panels]
    assert all(len(names) == 1 for names in per_panel), per_panel
    assert sorted(name for names in per_panel for name in names) == sorted(map(prometheus_name, EMITTED))


def test_queries_use_the_datasource_variable():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_counter_is_plotted_as_a_rate_and_gauges_as_values():
    for panel in dashboard()["panels"]:
        (expr,) = [t["expr"] for t in panel["targets"]]
        is_counter = prometheus_name(TIMEOUT_COUNTER) in expr
        assert ("increase(" in expr or "rate(" in expr) == is_counter, expr


def test_panels_do_not_overlap():
    cells = set()
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        cover = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & cover, panel["title"]
        cells |= cover


@pytest.mark.ray
def test_ray_exports_the_names_the_dashboard_queries(ray_head_factory, run_ops_script):
    # Ray reports metrics every 10 s by default; once a second keeps the test short.
    head = ray_head_factory(include_dashboard=False, extra_env={"RAY_metrics_report_interval_ms": "1000"})
    result = run_ops_script("metrics_probe.py", head.env, [head.gcs_address, head.metrics_url, "60"], timeout_s=120)
    assert result.returncode == 0, result.stderr[-4000:]
    exported = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert set(map(prometheus_name, EMITTED)) <= exported, exported
