"""End to end: a CI-sized ``make demo-r1`` with real Ray, vLLM and FSDP2: every stage kind (rm -> sft -> rl ->
sample -> eval) of ``deploy/pipelines/r1-demo.yaml`` on a tiny two-script world, with its ``evaluate``
block (the base and every model stage on the same held-out sets); interrupted (SIGTERM) during the RL
stage, then re-run: the finished stages are skipped, the interrupted one resumes from its checkpoint,
and every stage's outputs, evaluations and the report (table, checks, PNG) are there and consistent."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from math import comb
from pathlib import Path

import numpy as np
import pytest
import yaml

from cluster.data.r1_world import WorldRecipe, build_world

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY = WorldRecipe(
    eval_reasoning=12, eval_general=6, train_reasoning=200, train_general=60, cold_start=96, general_sft=32,
    preference_pairs=96, steps=20, long_only_steps=15, student_steps=4, student_long_only=3, probe_problems=4,
)  # fmt: skip
KEEP = ["preference_rm", "cold_start", "all_scenario_rl", "rejection_sampling"]
FOLDERS = ("1-preference_rm", "2-cold_start", "3-all_scenario_rl", "4-rejection_sampling", "5-final")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(tmp: Path) -> Path:
    """The shipped r1-demo pipeline, one stage of each kind, on a tiny world with tiny step counts."""
    world = tmp / "world"
    build_world(world, TINY)
    spec = yaml.safe_load((REPO / "deploy/pipelines/r1-demo.yaml").read_text().replace("runs/r1-world", str(world)))
    spec |= {"name": "mini-r1", "output_dir": str(tmp / "runs"), "eval_every": 4}
    spec["data"] |= {"eval_size": 12, "eval_samples": 2}
    spec["learner"]["micro_batch_size"] = 64
    spec["cluster"]["dashboard_port"] = _free_port()
    spec["sft"]["epochs"] = 2
    stages = sorted((s for s in spec["stages"] if s["name"] in KEEP), key=lambda s: KEEP.index(s["name"]))
    rl = next(s for s in stages if s["kind"] == "rl")
    rl["model"] = {"from": "cold_start"}
    rl["checkpoint_every"] = 1
    # One step off-policy: the next batch samples while the learner trains (engine logprobs as the
    # behaviour policy), here across a SIGTERM and a resume.
    rl["grpo"] = {"steps": 4, "prompts_per_step": 8, "group_size": 4, "async_rollouts": True}
    sample = next(s for s in stages if s["kind"] == "sample")
    sample["model"] = {"from": "all_scenario_rl"}
    # a 20-step base solves nothing: keep unfinished or wrong samples too, so the stage writes rows
    sample["sample"] |= {"prompts": 16, "samples": 4, "keep_per_prompt": 2, "require_correct": False}
    sample["sample"] |= {"min_language": None, "require_format": False, "mix_ratio": 0.0}
    stages.append({"name": "final", "kind": "eval", "model": {"from": "all_scenario_rl"}})
    spec["stages"] = stages
    spec["eval"] = {"data": str(world / "reasoning_eval.jsonl"), "samples": 4}
    path = tmp / "mini-r1.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return path


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    path = _pipeline(tmp)
    root = tmp / "runs" / "mini-r1"
    cmd = [sys.executable, "-m", "cluster", "pipeline", "--config", str(path)]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (root / "3-all_scenario_rl" / "checkpoints" / "step-1" / "driver_state.json").is_file():
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the RL stage wrote no checkpoint in time"
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)  # preemption in the middle of the RL stage
        first_out, _ = first.communicate(timeout=180)
        assert first.returncode == 0, first_out[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    return root, first_out, second.stdout


def test_interrupted_pipeline_skips_finished_stages_and_resumes(pipeline_run):
    root, first, second = pipeline_run
    assert "stage 2-cold_start (sft)" in first
    # SIGTERM: the step finished, a checkpoint was written, exit 0 with how to resume
    assert "SIGTERM: finishing this step" in first and "resume with: r1ray pipeline --config" in first
    assert "stage 1-preference_rm (rm) is complete, skipped" in second
    assert "stage 2-cold_start (sft) is complete, skipped" in second
    assert "stage 3-all_scenario_rl (rl), resumed" in second
    assert second.count("is complete, skipped") >= 4  # the two stages and the evaluations of the base and cold start
    assert "resumed from" in second
    for folder in FOLDERS:
        assert (root / folder / "stage.json").is_file(), folder
    report = json.loads((root / "pipeline_report.json").read_text())
    # the base is evaluated (and reported) before the first model stage
    assert [s["stage"] for s in report["stages"]] == [FOLDERS[0], "0-base", *FOLDERS[1:]]


def test_sft_stage_lowers_held_out_loss(pipeline_run):
    root, _, _ = pipeline_run
    summary = json.loads((root / "2-cold_start" / "summary.json").read_text())
    assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.05
    stage = json.loads((root / "2-cold_start" / "stage.json").read_text())
    assert Path(stage["output"]).is_dir() and (Path(stage["output"]) / "model.safetensors").is_file()
    rl = yaml.safe_load((root / "3-all_scenario_rl" / "config.yaml").read_text())
    assert rl["model"]["path"] == stage["output"]


def test_rl_stage_ran_all_steps_one_step_off_policy(pipeline_run):
    root, _, second = pipeline_run
    rows = [json.loads(line) for line in (root / "3-all_scenario_rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 5))
    resumed_at = int(second.split("resumed from ")[1].split(" at step ")[1].split()[0])
    for row in rows:
        # the first step of a run (and of a resume) samples with the newest weights; later ones one step behind
        fresh = row["step"] in (1, resumed_at + 1)
        assert row["rollout/staleness"] == (0 if fresh else 1), row["step"]
        assert row["rollout/logprob_diff_max"] < 1e-3


def test_sample_stage_writes_rows_with_provenance_and_yield(pipeline_run):
    root, _, second = pipeline_run
    # the sample and eval stages take the engines the RL model's evaluation left running (the warm fleet) ...
    for stage in ("4-rejection_sampling (sample)", "5-final (eval)"):
        assert "loaded into the warm fleet" in second.split(stage)[1].split("=== pipeline")[0], stage
    rows = [json.loads(line) for line in (root / "4-rejection_sampling" / "data.jsonl").read_text().splitlines()]
    yields = json.loads((root / "4-rejection_sampling" / "yield.json").read_text())
    assert yields["sampled"] == 64 and yields["kept"] == len(rows) and yields["prompts"] == 16
    assert yields["kept"] <= 2 * 16
    rl_model = json.loads((root / "3-all_scenario_rl" / "stage.json").read_text())["output"]
    for row in rows:
        # (a 20-step base may stop at once: with the correctness and format filters off, an empty response is kept)
        # ... and score with the stage's own rewards, not the evaluation's (reward model, language, harmless)
        assert row["prompt"] and isinstance(row["response"], str) and set(row["rewards"]) == {"exact", "format"}
        assert row["source"]["model"] == rl_model and row["source"]["stage"] == "4-rejection_sampling"
        assert row["source"]["sampling"]["samples"] == 4
    per_prompt = {}
    for row in rows:
        per_prompt[row["id"]] = per_prompt.get(row["id"], 0) + 1
    assert max(per_prompt.values(), default=0) <= 2


def test_eval_stage_report_agrees_with_its_per_sample_table(pipeline_run):
    root, _, _ = pipeline_run
    report = json.loads((root / "5-final" / "report.json").read_text())
    problems = report["per_problem"]
    assert len(problems) == 12 and all(len(p["samples"]) == 4 for p in problems)
    table = [[s["correct"] for s in p["samples"]] for p in problems]
    assert report["pass@1"] == pytest.approx(np.mean(table))
    for k in (1, 2, 4):
        direct = np.mean([1 - comb(4 - sum(r), k) / comb(4, k) for r in table])
        assert report["pass@k"][str(k)] == pytest.approx(direct)
    for key in ("cons@4", "greedy_accuracy", "format_rate", "language_consistency", "truncation_rate"):
        assert 0.0 <= report[key] <= 1.0
    sample = problems[0]["samples"][0]
    assert set(sample) >= {"text", "extracted", "correct", "length", "finish_reason"}
    assert report["sampling"]["temperature"] == 0.6 and report["sampling"]["top_p"] == 0.95


EVAL_KEYS = {"accuracy", "greedy_accuracy", "format_rate", "language_consistency", "non_reasoning_score",
             "reward_model_score", "harmful_rate", "response_length"}  # fmt: skip


def test_base_and_every_model_stage_are_evaluated_on_the_same_held_out_sets(pipeline_run):
    root, _, _ = pipeline_run
    report = json.loads((root / "pipeline_report.json").read_text())
    evaluated = {row["name"]: row for row in report["stages"] if "eval" in row}
    assert set(evaluated) == {"base", "cold_start", "all_scenario_rl"}
    prompts = None
    for name, row in evaluated.items():
        assert set(row["eval"]) >= EVAL_KEYS, name
        folder = root / row["stage"] / "eval"
        per_problem = json.loads((folder / "report.json").read_text())["per_problem"]
        assert prompts is None or [p["prompt"] for p in per_problem] == prompts  # the same problems for all
        prompts = [p["prompt"] for p in per_problem]
        arith = [s for p in per_problem if p["task"] == "arith" for s in p["samples"]]
        echo = [s for p in per_problem if p["task"] == "echo" for s in p["samples"]]
        assert len(arith) == 12 * 4 and len(echo) == 6 * 4
        # the figures are the per-sample table's: accuracy on reasoning problems, exact on the general ones,
        # the reward model's mean on the general ones, forbidden tokens over all samples
        assert row["eval"]["accuracy"] == pytest.approx(np.mean([s["correct"] for s in arith]))
        assert row["eval"]["non_reasoning_score"] == pytest.approx(np.mean([s["correct"] for s in echo]))
        assert row["eval"]["reward_model_score"] == pytest.approx(np.mean([s["components"]["helpful"] for s in echo]))
        harmful = np.mean(["!" in s["text"] for s in arith + echo])
        assert row["eval"]["harmful_rate"] == pytest.approx(harmful)
        assert all(s["components"]["helpful"] == 0.0 for s in arith)  # the reward model judges echo prompts only
    assert Path(report["plot"]).is_file() and Path(report["plot"]).stat().st_size > 10_000
    assert report["steps_to_threshold"]["of"] == "all_scenario_rl"
    assert isinstance(report["checks"], list)


def test_rl_stage_trains_on_rules_and_the_reward_model(pipeline_run):
    root, _, _ = pipeline_run
    rm = json.loads((root / "1-preference_rm" / "summary.json").read_text())
    assert rm["kind"] == "rm" and Path(rm["model"]).is_dir()
    cfg = yaml.safe_load((root / "3-all_scenario_rl" / "config.yaml").read_text())
    assert cfg["reward"]["models"]["helpful"]["path"] == rm["model"]
    rows = [json.loads(line) for line in (root / "3-all_scenario_rl" / "metrics.jsonl").read_text().splitlines()]
    for key in ("helpful", "harmless", "exact"):
        assert any(key in name for name in rows[0]), (key, sorted(rows[0]))
