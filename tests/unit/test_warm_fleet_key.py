"""When a pipeline's warm fleet may take a model in place (``cluster/runtime/warm_fleet.py``): equal keys for
checkpoints of one architecture and tokenizer under equal engine configs, different keys for anything an engine
is built from; the rewards and the sampling settings each call carries are not in the key (the kept fleet takes
another reward section in place: ``tests/ray/test_reward_model.py``, ``tests/ray/test_warm_fleet.py``)."""

import json
import shutil

import pytest

from cluster.config import RunConfig
from cluster.data.builtin_model import save_random_model
from cluster.runtime.warm_fleet import fleet_key, model_files_digest
from cluster.stages.pipeline_eval import check_block


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    a = save_random_model(root / "a", seed=1)
    trained = save_random_model(root / "trained", seed=2)  # other weights, and what a stage adds beside them
    (trained / "trainer_state.pt").write_bytes(b"optimizer")
    (trained / "driver_state.json").write_text("{}")
    config = json.loads((trained / "config.json").read_text()) | {"_name_or_path": "/elsewhere"}
    (trained / "config.json").write_text(json.dumps(config))
    tok = json.loads((trained / "tokenizer_config.json").read_text()) | {"is_local": True, "local_files_only": False}
    (trained / "tokenizer_config.json").write_text(json.dumps(tok))
    small = save_random_model(root / "small", hidden=64, seed=1)
    return root, a, trained, small


def _cfg(path, **tree) -> RunConfig:
    return RunConfig.model_validate(tree | {"model": tree.get("model", {}) | {"path": str(path)}})


def test_a_trained_checkpoint_of_the_same_architecture_and_tokenizer_shares_the_key(models):
    _, a, trained, _ = models
    assert model_files_digest(a) == model_files_digest(trained)
    # what only the training reads (the learner section, the data) does not matter either
    assert fleet_key(_cfg(a), a) == fleet_key(_cfg(trained, learner={"lr": 1e-3}, data={"train": "x.jsonl"}), trained)


def test_another_architecture_tokenizer_or_generation_config_changes_the_key(models):
    root, a, _, small = models
    assert model_files_digest(a) != model_files_digest(small)
    for name, change in [
        ("tokenizer.json", lambda text: text.replace('"<think>"', '"<thonk>"')),
        ("generation_config.json", lambda text: json.dumps(json.loads(text) | {"temperature": 0.7})),
    ]:
        other = root / f"other-{name}"
        shutil.copytree(a, other)
        (other / name).write_text(change((other / name).read_text()))
        assert model_files_digest(other) != model_files_digest(a), name


@pytest.mark.parametrize(
    "tree",
    [
        {"rollout": {"gpu_memory_utilization": 0.2}},
        {"rollout": {"seed": 7}},
        {"model": {"max_response_len": 40}},
        {"rollout": {"num_workers": 2}},
        {"cluster": {"placement": "colocated"}},
    ],
)
def test_what_the_engines_are_built_from_changes_the_key(models, tree):
    _, a, _, _ = models
    assert fleet_key(_cfg(a, **tree), a) != fleet_key(_cfg(a), a)


@pytest.mark.parametrize(
    "tree",
    [
        {"reward": {"weights": {"exact": 1.0, "format": 0.2}, "num_scorers": 2}},
        {"data": {"template": "r1zero"}},  # opens <think> in the prompt: only the scorers judge it differently
        {"rollout": {"temperature": 0.6, "top_p": 0.9, "stop": ["</think>"]}},  # carried by each generate call
    ],
)
def test_rewards_and_sampling_settings_leave_the_key(models, tree):
    _, a, _, _ = models
    assert fleet_key(_cfg(a, **tree), a) == fleet_key(_cfg(a), a)


def test_keep_engines_must_be_a_boolean():
    assert check_block({"keep_engines": False}, "p.yaml") == {"keep_engines": False}
    with pytest.raises(Exception, match="keep_engines"):
        check_block({"keep_engines": "no"}, "p.yaml")


def test_an_evaluation_fleet_is_sized_without_learner_ranks():
    from cluster.runtime.placement import SCORER_CPUS, required_cpus

    cfg = RunConfig.model_validate({"rollout": {"cpus_per_worker": 2}, "learner": {"cpus_per_rank": 2}})
    assert required_cpus(cfg) - required_cpus(cfg, learners=False) == 2
    assert required_cpus(cfg, learners=False) == 2 + cfg.reward.num_scorers * SCORER_CPUS
