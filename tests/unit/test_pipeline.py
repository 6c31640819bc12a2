"""Pipeline files: every shipped one validates; every kind of mistake is one line naming the stage."""

from pathlib import Path

import pytest
import yaml

from cluster.cli import main
from cluster.stages.pipeline import PipelineError, load_pipeline, stage_figures

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "deploy" / "pipelines").glob("*.yaml"))


def test_pipelines_are_shipped():
    assert {p.name for p in SHIPPED} >= {"r1.yaml", "r1-zero.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_pipeline_validates(path, capsys):
    assert main(["validate", "--config", str(path)]) == 0
    assert "pipeline OK" in capsys.readouterr().err


def test_r1_pipeline_wires_the_recipe():
    pipe = load_pipeline(REPO / "deploy" / "pipelines" / "r1.yaml")
    by_name = {s.name: s for s in pipe.stages}
    for stage in pipe.stages:  # every stage keeps the shared model settings, whatever model it starts from
        cfg = pipe.config(stage, pipe.placeholders())
        assert (cfg.model.dtype, cfg.model.max_response_len) == ("bfloat16", 8192), stage.name
    assert by_name["reasoning_rl"].refs == {"model.path": "cold_start"}
    # R1 fine-tunes the base model on the rejection-sampled data, not the RL checkpoint.
    assert by_name["rs_sft"].refs == {"sft.train": "rejection_sampling"}
    assert "model.path" not in by_name["rs_sft"].refs
    assert by_name["all_scenarios_rl"].refs["reward.models.helpful.path"] == "preference_rm"
    assert by_name["distill"].refs == {"sft.train": "rejection_sampling"}
    cfg = pipe.config(by_name["rs_sft"], {"rejection_sampling": "/x/data.jsonl"})
    assert cfg.sft.train == "/x/data.jsonl" and cfg.name == "4-rs_sft"
    assert cfg.output_dir == str(pipe.root)


def _write(tmp_path, stages, **shared) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "output_dir": str(tmp_path), **shared, "stages": stages}))
    return path


SFT = {"name": "cold", "kind": "sft", "sft": {"train": "rows.jsonl"}}


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "a", "kind": "dpo"}], "unknown kind 'dpo'"),
        ([{"kind": "rl"}], "'name' is missing"),
        ([SFT, SFT], "a stage of that name comes earlier"),
        ([{"name": "rl", "kind": "rl", "model": {"from": "cold"}}, SFT], "names no earlier stage (it comes later)"),
        ([{"name": "rl", "kind": "rl", "model": {"from": "nope"}}], "from 'nope' names no earlier stage"),
        ([{"name": "rl", "kind": "rl", "model": {"from": "rl"}}], "from 'rl' names no earlier stage"),
        (
            [
                {"name": "s", "kind": "sample", "sample": {"prompts": 4}},
                {"name": "r", "kind": "rl", "model": {"from": "s"}},
            ],
            "stage 's' (sample) produces a data, not a model",
        ),
        ([SFT, {"name": "t", "kind": "sft", "data": {"from": "cold"}}], "produces a model, not a data"),
        (
            [
                {"name": "rm", "kind": "rm", "rm": {"train": "pairs.jsonl"}},
                {"name": "r", "kind": "rl", "model": {"from": "rm"}},
            ],
            "stage 'rm' (rm) produces a reward model, not a model",
        ),
        (
            [
                SFT,
                {
                    "name": "r",
                    "kind": "rl",
                    "reward": {"weights": {"exact": 1.0, "h": 1.0}, "models": {"h": {"path": {"from": "cold"}}}},
                },
            ],
            "stage 'cold' (sft) produces a model, not a reward model",
        ),
        ([{"name": "cold", "kind": "sft"}], "sft.train is missing"),
        ([{"name": "s", "kind": "sample"}], "sample.prompts is missing"),
        ([{"name": "rm", "kind": "rm"}], "rm.train is missing"),
        ([{"name": "r", "kind": "rl", "grpo": {"stepz": 3}}], "grpo.stepz: unknown key"),
        ([{"name": "r", "kind": "rl", "grpo": {"steps": 0}}], "grpo.steps"),
        ([{"name": "r", "kind": "rl", "name2": 1}], "name2: unknown key"),
        ([{"name": "r", "kind": "rl", "output_dir": "x"}], "set by the pipeline"),
        ("rl", "'stages' must be a non-empty list"),
        ([], "'stages' must be a non-empty list"),
    ],
)
def test_bad_pipeline_is_one_line_exit_2(tmp_path, capsys, stages, message):
    path = _write(tmp_path, stages)
    with pytest.raises(PipelineError, match=None) as err:
        load_pipeline(path)
    assert message in str(err.value)
    assert main(["validate", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


def test_shared_sections_merge_and_overrides_apply(tmp_path):
    path = _write(
        tmp_path,
        [SFT, {"name": "rl", "kind": "rl", "model": {"from": "cold", "max_response_len": 64}, "grpo": {"steps": 7}}],
        grpo={"steps": 3, "group_size": 4},
        model={"max_response_len": 32, "max_prompt_len": 99, "dtype": "bfloat16"},
    )
    pipe = load_pipeline(path, ["grpo.group_size=2"])
    rl = pipe.stages[1]
    cfg = pipe.config(rl, {"cold": "/ck"})
    assert (cfg.grpo.steps, cfg.grpo.group_size, cfg.model.path, cfg.model.max_response_len) == (7, 2, "/ck", 64)
    # model: {from: ...} replaces the path only: the shared model section still applies
    assert (cfg.model.max_prompt_len, cfg.model.dtype) == (99, "bfloat16")
    assert pipe.config(pipe.stages[0], {}).grpo.steps == 3


def test_pipeline_command_needs_a_file(capsys):
    assert main(["pipeline"]) == 2
    assert "--config" in capsys.readouterr().err


def test_stage_figures_per_kind():
    ev = {"samples_per_problem": 4, "pass@1": 0.5, "cons@4": 0.75, "greedy_accuracy": 0.25}
    assert stage_figures("eval", ev) == {"pass@1": 0.5, "cons@4": 0.75, "greedy": 0.25}
    sft = {"eval_loss_before": 2.0, "eval_loss_after": 1.0}
    assert stage_figures("sft", sft) == sft


def test_a_reward_model_trains_further_on_pairs_of_the_policys_own_samples(tmp_path):
    """rm from rm (iterated reward modelling): a sample stage's pairs feed a reward model that starts from an
    earlier one; an RL stage still may not start from a reward model (the parametrized errors above)."""
    stages = [
        {"name": "judge", "kind": "rm", "rm": {"train": "pairs.jsonl"}},
        SFT,
        {"name": "pairs", "kind": "sample", "model": {"from": "cold"}, "sample": {"prompts": 4, "output": "pairs"}},
        {"name": "judge2", "kind": "rm", "model": {"from": "judge"}, "data": {"from": "pairs"}},
    ]
    pipe = load_pipeline(_write(tmp_path, stages))
    second = pipe.stages[3]
    assert second.refs == {"model.path": "judge", "rm.train": "pairs"}
    cfg = pipe.config(second, {"judge": "/rm/step-9", "pairs": "/p/data.jsonl", "cold": "/ck"})
    assert (cfg.model.path, cfg.rm.train) == ("/rm/step-9", "/p/data.jsonl")
    assert pipe.config(pipe.stages[2], {"judge": "/rm", "cold": "/ck"}).sample.output == "pairs"
