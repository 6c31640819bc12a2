"""Every cluster config under deploy/cluster/ passes Ray's own validation, offline, and fits r1ray.

How each kind is checked without a cloud account or a Kubernetes cluster:
- aws / gcp: `prepare_config` (merges the provider's defaults.yaml, merges setup commands, checks the
  docker section, fills per-type min/max workers: all local) and then `validate_config` (Ray's JSON
  schema plus its cross-field rules). `ray up` does more after that (`_bootstrap_config`: detecting
  instance resources and creating IAM roles, keys, subnets through the cloud API); that part needs
  the cloud and is not run here.
- fake_multinode: `validate_config` on the file as written. `prepare_config` cannot run for this
  provider in Ray 2.60 (its defaults file, example.yaml, is missing from the wheel), and the
  autoscaler started by `ray start --autoscaling-config` reads the file without a defaults merge,
  so the file must be complete on its own, which is exactly what validate_config checks.
- KubeRay: the RayJob's embedded RayCluster spec goes through the function the in-cluster
  autoscaler itself uses (`_derive_autoscaling_config_from_ray_cr`), and its result through
  `validate_config`.
Run: `pytest tests/ops/test_cluster_yamls.py -v`.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.providers import _get_default_config
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
YAMLS = sorted(CLUSTER_DIR.glob("*.yaml"))
OPEN_HOSTS = {"0.0.0.0", "::", "[::]"}


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def rayjobs(path: Path) -> list[dict]:
    return [doc for doc in load_docs(path) if doc.get("kind") == "RayJob"]


def is_kuberay(path: Path) -> bool:
    return bool(rayjobs(path))


def ray_cluster_cr(rayjob: dict) -> dict:
    """The RayCluster custom resource KubeRay creates from a RayJob (the parts the autoscaler reads)."""
    metadata = {key: rayjob["metadata"][key] for key in ("name", "namespace")}
    return {"metadata": metadata, "spec": rayjob["spec"]["rayClusterSpec"]}


def autoscaler_config(path: Path) -> dict:
    """The validated autoscaler config a cluster file turns into, reached the offline way for its kind."""
    if is_kuberay(path):
        (rayjob,) = rayjobs(path)
        config = _derive_autoscaling_config_from_ray_cr(ray_cluster_cr(rayjob))
    else:
        (config,) = load_docs(path)
        if config["provider"]["type"] != "fake_multinode":
            config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_every_cluster_file_is_covered():
    kinds = {"kuberay" if is_kuberay(p) else load_docs(p)[0]["provider"]["type"] for p in YAMLS}
    assert kinds == {"aws", "gcp", "fake_multinode", "kuberay"}, [p.name for p in YAMLS]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_validates_against_rays_schema(path):
    autoscaler_config(path)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_node_types_carry_r1ray_resources(path):
    config = autoscaler_config(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert not {"learner", "rollout"} & head["resources"].keys(), "the head must not attract learners or engines"

    learner_types = [name for name, t in types.items() if t["resources"].get("learner", 0) > 0]
    rollout_types = [name for name, t in types.items() if t["resources"].get("rollout", 0) > 0]
    assert len(learner_types) == 1 and len(rollout_types) == 1, (learner_types, rollout_types)
    assert learner_types != rollout_types, "learner and rollout live on separate node types"

    learner, rollout = types[learner_types[0]]["resources"], types[rollout_types[0]]["resources"]
    if config["provider"]["type"] != "fake_multinode":
        # One FSDP2 rank per GPU; at most one engine per GPU (fewer with tensor parallelism).
        assert learner["learner"] == learner["GPU"] > 0
        assert 0 < rollout["rollout"] <= rollout["GPU"]
    for name in (learner_types[0], rollout_types[0]):
        assert types[name]["min_workers"] == 0 < types[name]["max_workers"], f"{name} scales from zero"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_idle_nodes_are_given_back(path):
    config = autoscaler_config(path)
    assert 0 < config["idle_timeout_minutes"] <= 30


def dashboard_hosts_and_auth(path: Path) -> tuple[list[str], bool]:
    """Where the head's dashboard listens, and whether token auth is switched on for it."""
    if is_kuberay(path):
        (rayjob,) = rayjobs(path)
        spec = rayjob["spec"]["rayClusterSpec"]
        head_container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in head_container.get("env", [])}
        token = spec.get("authOptions", {}).get("mode") == "token" or env.get("RAY_AUTH_MODE") == "token"
        return [spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "localhost")], token
    (config,) = load_docs(path)
    commands = [shlex.split(cmd) for cmd in config["head_start_ray_commands"]]
    hosts = [
        token.split("=", 1)[1] if "=" in token else cmd[i + 1]
        for cmd in commands
        for i, token in enumerate(cmd)
        if token.startswith("--dashboard-host")
    ]
    token = any("RAY_AUTH_MODE=token" in cmd for cmd in config["head_start_ray_commands"])
    return hosts or ["localhost"], token


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_dashboard_is_not_open_without_token_auth(path):
    hosts, token_auth = dashboard_hosts_and_auth(path)
    if OPEN_HOSTS & set(hosts):
        assert token_auth, f"{path.name}: dashboard on {hosts} needs RAY_AUTH_MODE=token"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_configs_install_r1ray_gpu_and_spell_out_every_field(name):
    (config,) = load_docs(CLUSTER_DIR / name)
    # A field left out is silently taken from Ray's defaults.yaml, whose setup_commands install a
    # Ray nightly wheel: every top-level field must be ours.
    assert _get_default_config(config["provider"]).keys() <= config.keys()
    assert config["file_mounts"]["/home/ray/r1ray"] == "."
    assert any("/home/ray/r1ray[gpu]" in cmd for cmd in config["setup_commands"])
    assert ray.__version__ in config["docker"]["image"], "cluster and client must run the same Ray"


def test_kuberay_job_runs_r1ray_on_the_installed_ray_version():
    (rayjob,) = rayjobs(CLUSTER_DIR / "kuberay-rayjob.yaml")
    spec = rayjob["spec"]
    assert spec["entrypoint"].startswith("r1ray train --config deploy/configs/")
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    assert f"rayproject/ray:{ray.__version__}-" in (CLUSTER_DIR / "Dockerfile").read_text()


def test_fake_multinode_config_matches_the_fake_provider():
    (config,) = load_docs(CLUSTER_DIR / "local-fake-multinode.yaml")
    assert config["head_node_type"] == FAKE_HEAD_NODE_TYPE, "the provider tags its head with this type"
    # Without it every fake node reports 127.0.0.1 and idle nodes are never removed.
    assert config["provider"]["use_node_id_as_ip"] is True
    assert all("GPU" not in t["resources"] for t in config["available_node_types"].values())


# ---------------------------------------------------------------- shared storage, token auth, packing
GPU_CONFIG = CLUSTER_DIR.parent / "configs" / "cluster-gpu.yaml"
SHIPPED_GPU = ["aws.yaml", "gcp.yaml", "kuberay-rayjob.yaml"]


def config_paths() -> list[str]:
    """Every filesystem path the shipped GPU experiment reads or writes (after the RayJob's overrides)."""
    cfg = yaml.safe_load(GPU_CONFIG.read_text())
    return [cfg["output_dir"], cfg["model"]["path"], cfg["data"]["train"], cfg["data"]["eval"]]


def container_mounts(name: str) -> list[set[str]]:
    """Per Ray container (VM clusters: one image everywhere; KubeRay: each pod template), the paths under
    which the shared volume is visible."""
    path = CLUSTER_DIR / name
    if is_kuberay(path):
        (rayjob,) = rayjobs(path)
        spec = rayjob["spec"]["rayClusterSpec"]
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        mounts = []
        for template in templates:
            shared = {v["name"] for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
            (container,) = template["spec"]["containers"]
            mounts.append({m["mountPath"] for m in container["volumeMounts"] if m["name"] in shared})
        return mounts
    (config,) = load_docs(path)
    volumes = set()
    for option in config["docker"]["run_options"]:
        flag, _, value = option.partition(" ")
        if flag in ("-v", "--volume"):
            host, container = value.split(":")[:2]
            assert any(host in cmd for cmd in config["initialization_commands"]), f"{host} is not mounted on the host"
            volumes.add(container)
    return [volumes]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@pytest.mark.parametrize("name", SHIPPED_GPU)
def test_the_experiments_paths_are_on_the_shared_volume_in_every_container(name):
    for mounts in container_mounts(name):
        assert mounts, f"{name}: a Ray container without the shared volume"
        for path in config_paths():
            assert any(_under(path, m) for m in mounts), f"{name}: {path} is outside the shared mounts {mounts}"
    if is_kuberay(CLUSTER_DIR / name):
        (rayjob,) = rayjobs(CLUSTER_DIR / name)
        assert "output_dir=" not in rayjob["spec"]["entrypoint"], "the config's output_dir is the one on the volume"


@pytest.mark.parametrize("name", SHIPPED_GPU)
def test_token_auth_is_on_in_every_shipped_cluster_file(name):
    path = CLUSTER_DIR / name
    if is_kuberay(path):
        (rayjob,) = rayjobs(path)
        assert rayjob["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"
        return
    (config,) = load_docs(path)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"], "ray exec / the driver need it too"
    assert "/home/ray/.ray/auth_token" in config["file_mounts"], "every node needs the token file"


def test_the_fake_multinode_rehearsal_is_the_one_file_without_token_auth():
    text = (CLUSTER_DIR / "local-fake-multinode.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" in text and "127.0.0.1" in text  # loopback only, by hand, on one machine


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_comments_name_the_packing_strategy_the_code_uses(path):
    from cluster.runtime.placement import LEARNER_STRATEGY

    text = path.read_text()
    for strategy in ("STRICT_PACK", "STRICT_SPREAD"):
        if strategy != LEARNER_STRATEGY:
            assert strategy not in text, f"{path.name} promises {strategy}; learners are placed with {LEARNER_STRATEGY}"
