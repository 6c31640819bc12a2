"""The demo-r1 world (its two scripts, data files, held-out sets) and the pipeline's per-stage evaluation
figures and R1 checks, without Ray.

Run: .venv/bin/python -m pytest tests/unit/test_r1_world.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from cluster.data.r1_world import (
    FORBIDDEN,
    GENERAL,
    REASONING,
    SCRIPTS,
    Echo,
    Problem,
    World,
    WorldRecipe,
    near_miss,
    spell,
    typo,
    write_files,
)
from cluster.errors import ConfigError
from cluster.stages.pipeline_eval import check_block, figures
from cluster.stages.pipeline_figures import r1_checks, steps_to
from rewards.exact import exact_match_reward
from rewards.format import format_reward
from rewards.harmless import harmless_reward
from rewards.language import consistency_reward, detect_language

SMALL = WorldRecipe(
    eval_reasoning=20, eval_general=10, train_reasoning=300, train_general=100, cold_start=50,
    general_sft=40, preference_pairs=60,
)  # fmt: skip


def test_numbers_are_spelled_in_either_script_and_worked_out_right() -> None:
    assert spell("347", "en") == "deh" and spell("347", "ru") == "гдз"
    p = Problem(347, 285, "en")
    assert p.prompt == "deh+cif=" and p.answer == spell("632", "en")
    worked = p.worked()
    assert worked == "<think>h+f+a=bc;e+i+b=bd;d+c+b=ag</think><answer>gdc</answer>"
    assert exact_match_reward(worked, p.answer) == 1.0 and format_reward(worked) == 1.0
    assert consistency_reward(worked, "en") == 1.0
    assert detect_language(p.prompt) == "en" and detect_language(Problem(347, 285, "ru").prompt) == "ru"


def test_mixed_chains_of_thought_lower_language_consistency_only() -> None:
    p = Problem(347, 285, "en")
    mixed = p.worked(random.Random(0), switch=1.0)  # every step in the other script
    assert exact_match_reward(mixed, p.answer) == 1.0
    assert consistency_reward(mixed, "en") == 0.0 and consistency_reward(mixed, "ru") == 1.0
    assert harmless_reward(p.worked(harm=True), "") == 0.0 and harmless_reward(p.worked(), "") == 1.0


def test_echo_typos_change_one_letter_of_the_same_script() -> None:
    rng = random.Random(0)
    for word in ("abcde", "абвг"):
        wrong = typo(word, rng)
        assert wrong != word and len(wrong) == len(word)
        assert sum(a != b for a, b in zip(wrong, word, strict=True)) == 1
        assert set(wrong) <= set(SCRIPTS["en"] if word[0] in SCRIPTS["en"] else SCRIPTS["ru"])
    assert Echo("abc").response(harm=True) == f"<think>{FORBIDDEN}</think><answer>abc</answer>"


def test_world_files_keep_held_out_problems_out_of_every_training_file(tmp_path: Path) -> None:
    world = World(SMALL)
    paths = write_files(world, tmp_path)
    rows = {name: [json.loads(line) for line in Path(p).read_text().splitlines()] for name, p in paths.items()}
    held = {r["prompt"] for r in rows["eval"]}
    assert len(rows["eval"]) == 30 and {r["task"] for r in rows["eval"]} == {REASONING, GENERAL}
    assert [r["task"] for r in rows["reasoning_eval"]] == [REASONING] * 20
    for name in ("train", "all_prompts", "cold_start", "general_sft", "preferences"):
        assert not held & {r["prompt"] for r in rows[name]}, name
    for row in rows["cold_start"]:  # readable: one script, worked, nothing forbidden
        lang = detect_language(row["prompt"])
        assert consistency_reward(row["response"], lang) == 1.0 and FORBIDDEN not in row["response"]
    assert all(r["chosen"] != r["rejected"] for r in rows["preferences"])
    assert {r["task"] for r in rows["all_prompts"]} == {REASONING, GENERAL}
    # the same recipe writes the same files
    again = write_files(World(SMALL), tmp_path / "again")
    assert all(Path(again[n]).read_text() == Path(paths[n]).read_text() for n in paths)


def test_pretraining_rows_mix_scripts_and_carry_typos_and_forbidden_tokens() -> None:
    world, rng = World(SMALL), random.Random(0)
    rows = [world.pretraining_row(rng, 0.5) for _ in range(2000)]
    kinds = [k for _, _, k in rows]
    assert 0.3 < kinds.count("echo") / len(rows) < 0.4
    long = [(p, c) for p, c, k in rows if k == "long"]
    mixed = [c for p, c in long if consistency_reward(c, detect_language(p)) < 1.0]
    assert 0.3 < len(mixed) / len(long) < 0.8
    assert 0.05 < sum(FORBIDDEN in c for _, c, _ in rows) / len(rows) < 0.15


def _problem(task: str, correct: list[bool], harmless: list[float], rm: list[float]) -> dict:
    samples = [
        {"correct": c, "extracted": "x", "length": 10, "finish_reason": "stop", "format": 1.0, "language": 1.0,
         "components": {"exact": float(c), "harmless": h, "helpful": r}}
        for c, h, r in zip(correct, harmless, rm, strict=True)
    ]  # fmt: skip
    return {"task": task, "samples": samples, "greedy": samples[0]}


def test_stage_figures_split_reasoning_and_general_problems() -> None:
    report = {
        "per_problem": [
            _problem("arith", [True, False], [1.0, 1.0], [0.0, 0.0]),
            _problem("echo", [True, True], [0.0, 1.0], [2.0, 4.0]),
        ],
        "components": {"harmless": 0.75},
    }
    block = {"reasoning_tasks": ["arith"], "general_tasks": ["echo"], "reward_model": "helpful", "harmless": "harmless"}
    out = figures(report, block, "exact")
    assert out["accuracy"] == 0.5 and out["greedy_accuracy"] == 1.0
    assert out["non_reasoning_score"] == 1.0 and out["reward_model_score"] == 3.0
    assert out["harmful_rate"] == pytest.approx(0.25)


def test_evaluate_block_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="evaluate.reasoning_tasks"):
        check_block({"reasoning_tasks": "arith"}, "p.yaml")
    with pytest.raises(ConfigError, match="set by the pipeline"):
        check_block({"model": {"path": "x"}}, "p.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        check_block([1], "p.yaml")


def test_steps_to_threshold_and_r1_checks() -> None:
    evals = [{"step": 0, "accuracy": 0.1}, {"step": 10, "accuracy": 0.3}, {"step": 20, "accuracy": 0.5}]
    assert steps_to(evals, 0.3) == 10 and steps_to(evals, 0.6) is None
    ev = {
        "base": {"accuracy": 0.1},
        "r1_zero": {"accuracy": 0.4, "language_consistency": 0.7},
        "reasoning_rl": {"accuracy": 0.38, "language_consistency": 0.97, "non_reasoning_score": 0.4},
        "rs_sft": {"accuracy": 0.36, "non_reasoning_score": 0.7, "reward_model_score": 0.1, "harmful_rate": 0.1},
        "all_scenario_rl": {"accuracy": 0.35, "non_reasoning_score": 0.8, "reward_model_score": 0.5,
                            "harmful_rate": 0.02},
        "distill": {"accuracy": 0.3},
        "student_rl": {"accuracy": 0.1},
    }  # fmt: skip
    wall = {"distill": 30.0, "student_rl": 40.0}
    result = {
        "stages": [{"name": n, "eval": e, "wall_s": wall.get(n)} for n, e in ev.items()],
        "steps_to_threshold": {"stages": {"r1_zero": 60, "reasoning_rl": 0}},
    }
    checks = r1_checks(result)
    assert len(checks) == 13 and all(c["holds"] for c in checks), [c for c in checks if not c["holds"]]
    ev["all_scenario_rl"]["accuracy"] = 0.30  # more than 3 points below rs_sft
    failed = [c["claim"] for c in r1_checks(result) if not c["holds"]]
    assert failed == ["all_scenario_rl: accuracy not more than 3 points below rs_sft"]


def test_saved_world_models_keep_both_scripts_through_auto_tokenizer(tmp_path: Path) -> None:
    """transformers (and vLLM) load the saved tokenizer: both scripts' letters must survive it."""
    from transformers import AutoConfig, AutoTokenizer

    from cluster.data.r1_world_model import world_model, world_tokenizer

    tok = world_tokenizer()
    world_model(len(tok), hidden=32, layers=1).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "бва+егз=<think>а+в+з=бж</think><answer>жез!</answer>"
    assert loaded(text)["input_ids"] == tok.encode(text) and loaded.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) == len(text) - len("<think></think><answer></answer>") + 4
    assert AutoConfig.from_pretrained(tmp_path).model_type == "llama"


@pytest.mark.parametrize("hidden", [WorldRecipe().hidden, WorldRecipe().student_hidden])
def test_world_models_have_a_head_size_vllm_cpu_serves(hidden: int) -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from cluster.data.r1_world_model import world_model

    config = world_model(40, hidden=hidden, layers=1).config
    assert config.head_dim * config.num_attention_heads == hidden
    assert config.head_dim in CPUAttentionBackend.get_supported_head_sizes()


def test_preference_pairs_reject_typos_near_misses_and_junk() -> None:
    rng = random.Random(0)
    words = ["abcde", "вгдеж"] * 200
    rejected = [near_miss(w, rng) for w in words]
    assert all(r != w for r, w in zip(rejected, words, strict=True))
    same_length = sum(len(r) == len(w) for r, w in zip(rejected, words, strict=True)) / len(words)
    junk = sum(any(c in r for c in "+=;<") for r in rejected) / len(words)
    assert 0.75 < same_length < 0.9 and 0.02 < junk < 0.12
