"""The autoscaler really launches and removes r1ray's node types, on Ray's fake multinode provider.

A head starts with a copy of deploy/cluster/local-fake-multinode.yaml (its GCS port filled in, the
idle timeout cut to seconds); a probe actor that needs `rollout: 1` makes the autoscaler launch a
`rollout_cpu` node (a real raylet on this machine), and once the actor is gone the idle node is
removed again. Run: `pytest tests/ops/test_autoscaling.py -v`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

LOCAL_YAML = Path(__file__).resolve().parents[2] / "deploy" / "cluster" / "local-fake-multinode.yaml"
TIMEOUT_S = 60


def fast_config(gcs_address: str, out: Path) -> Path:
    """The committed local config, pointed at this head, with an idle timeout of a few seconds."""
    config = yaml.safe_load(LOCAL_YAML.read_text())
    config["provider"]["gcs_address"] = gcs_address
    config["idle_timeout_minutes"] = 0.05
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_rollout_demand_launches_and_removes_a_rollout_node(ray_head_factory, run_ops_script, tmp_path):
    # The autoscaling config must name the head's GCS port, known only once the factory has picked a
    # free one: `before_start` writes the file then, before `ray start` runs.
    config_path = tmp_path / "autoscaling.yaml"
    head = ray_head_factory(
        include_dashboard=False,
        extra_env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        extra_args=[f"--autoscaling-config={config_path}"],
        before_start=lambda gcs_address: fast_config(gcs_address, config_path),
    )

    args = [head.gcs_address, "rollout", str(TIMEOUT_S)]
    result = run_ops_script("autoscale_probe.py", head.env, args, timeout_s=3 * TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:] + head.log_tail()
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"scale up {report['scale_up_s']} s, scale down {report['scale_down_s']} s")

    assert len(report["nodes_before"]) == 1, "only the head before the demand"
    launched = {nid: res for nid, res in report["nodes_during"].items() if nid not in report["nodes_before"]}
    assert list(launched) == [report["probe_node"]], "one new node, and the probe runs on it"
    assert launched[report["probe_node"]].get("rollout") == 1.0
    assert "learner" not in launched[report["probe_node"]], "a rollout_cpu node, not a learner node"
    assert report["nodes_after"].keys() == report["nodes_before"].keys(), "the idle rollout node was removed"
    assert report["scale_up_s"] < TIMEOUT_S and report["scale_down_s"] < TIMEOUT_S
