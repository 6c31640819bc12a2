"""Configs: every shipped YAML loads; bad input is one clear line naming the field, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import CONFIG_DIR, ConfigError, RunConfig, load_config

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_shipped_configs():
    assert any(p.name == "demo.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_default_is_the_demo():
    assert load_config().name == "demo"


def test_override_sets_nested_values_as_yaml():
    cfg = load_config(None, ["grpo.steps=7", "reward.weights={exact: 1.0}", "rollout.stop=[x, y]"])
    assert cfg.grpo.steps == 7
    assert cfg.reward.weights == {"exact": 1.0}
    assert cfg.rollout.stop == ["x", "y"]


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["grpo.group_size=1"], "grpo.group_size"),
        (["grpo.nope=1"], "grpo.nope: unknown key"),
        (["nope.x=1"], "nope: unknown key"),
        (["learner.lr=fast"], "learner.lr"),
        (["learner.world_size=3"], "learner.world_size"),
        (["rollout.top_p=0"], "rollout.top_p"),
        (["reward.accuracy_key=format_think_opened"], "reward.accuracy_key"),
        (["reward.weights={}"], "reward.weights"),
        (["data.template=no placeholder"], "data.template"),
        (["learner.mixed_precision=bf16"], "learner.mixed_precision"),
        (["cluster.weight_sync=nccl"], "cluster.weight_sync"),
        (["grpo.loss_agg=mean"], "grpo.loss_agg"),
        (["name=a/b"], "name"),
        (["grpo.steps"], "expected dotted.key=value"),
        (["grpo.steps.x=1"], "grpo.steps"),
        (["reward.weights={exatc: 1.0, exact: 1.0}"], "unknown reward 'exatc'"),
        (["data.digits=1"], "data.eval_size"),
        (["rollout.temperature=0"], "rollout.temperature"),
        (["model.builtin_pretrain_steps=0"], "model.builtin_pretrain_steps"),
        (["grpo.clip_ratio_c=1"], "grpo.clip_ratio_c"),
        (["grpo.kl_max=0"], "grpo.kl_max"),
        (["rollout.engine_in_actor=maybe"], "rollout.engine_in_actor"),
        (["rollout.top_p=0.7", "grpo.mini_batches=4"], "rollout.top_p < 1"),
        (["rollout.top_p=0.7", "grpo.async_rollouts=true"], "rollout.top_p < 1"),
        (["data.overlong=cut"], "data.overlong"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "--set", "grpo.group_size=1"],
        ["train", "--set", "learner.betas=oops"],
        ["validate", "--config", "does/not/exist.yaml"],
    ],
)
def test_cli_config_error_is_one_line_exit_2(args):
    proc = subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1ray: config error:")


def test_cli_validate_prints_resolved_config():
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "validate", "--set", "grpo.steps=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "steps: 3" in proc.stdout


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys; from cluster.cli import main; import contextlib, io\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'vllm', 'ray') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2]
    )
    assert proc.stdout.strip() == "[]"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "train", "--resume", str(run)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "no complete checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_a_fresh_run_moves_an_old_one_aside(tmp_path):
    from cluster.stages.common import archive_previous_run

    run = tmp_path / "demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    archive_previous_run(run)
    assert not run.exists()
    (moved,) = tmp_path.glob("demo-*")
    assert (moved / "metrics.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize(
    ("overrides", "in_actor"),
    [
        ([], True),  # CPU: the engine core runs in the rollout actor
        (["rollout.gpus_per_worker=1", "learner.gpus_per_rank=1"], False),
        (["rollout.engine_in_actor=false"], False),
    ],
)
def test_rollout_engine_placement(overrides, in_actor):
    from cluster.runtime.placement import rollout_env

    env = rollout_env(load_config(None, ["rollout.cpus_per_worker=2", *overrides]))
    assert (env.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0") is in_actor
    assert (env.get("OMP_NUM_THREADS") == "2") is in_actor


def test_top_p_below_one_is_fine_when_the_learner_gives_the_old_policy():
    cfg = load_config(None, ["rollout.top_p=0.7", "grpo.mini_batches=4", "grpo.old_logprobs=learner"])
    assert cfg.rollout.top_p == 0.7


def test_a_malformed_dataset_line_is_one_line_and_exit_2_before_ray(tmp_path):
    from cluster.data.builtin_model import save_random_model

    model = save_random_model(tmp_path / "model", hidden=32, layers=1)
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "answer": \n')
    args = ["--set", f"model.path={model}", "--set", f"data.train={data}", "--set", f"output_dir={tmp_path}"]
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "train", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{data}, line 2: not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert "Ray dashboard" not in proc.stdout, "no cluster is started for a run that cannot begin"


def test_the_reference_actor_reserves_its_cpus_beside_the_learners():
    from cluster.runtime.placement import required_cpus

    base = load_config(None, [])
    apart = load_config(None, ["learner.reference=actor", "learner.reference_cpus=3"])
    assert required_cpus(apart) == required_cpus(base) + 3
    assert required_cpus(apart, learners=False) == required_cpus(base, learners=False)  # an evaluation fleet
    no_kl = load_config(None, ["learner.reference=actor", "grpo.kl_coef=0"])  # no KL term: no reference actor
    assert required_cpus(no_kl) == required_cpus(base)
    with pytest.raises(ConfigError, match="learner.reference"):
        load_config(None, ["learner.reference=elsewhere"])
    gpus = ["learner.gpus_per_rank=1", "rollout.gpus_per_worker=1", "learner.reference=actor"]
    with pytest.raises(ConfigError, match="learner.reference_gpus = 1"):
        load_config(None, gpus)
    assert load_config(None, [*gpus, "learner.reference_gpus=1"]).learner.reference_gpus == 1
