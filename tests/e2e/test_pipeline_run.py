"""End to end: a four-stage pipeline (sft -> rl -> sample -> eval) on the builtin model with real Ray,
vLLM and FSDP2; interrupted (SIGTERM) during the RL stage, then re-run: the finished stage is skipped,
the interrupted one resumes from its checkpoint, and every stage's outputs are there and consistent."""

import json
import os
import random
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

from cluster.data.builtin_model import save_random_model
from cluster.data.tasks import AdditionTask

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(tmp: Path) -> Path:
    task = AdditionTask(digits=3, seed=0, eval_size=16)
    rng = random.Random(1)
    with (tmp / "cold_start.jsonl").open("w") as f:
        for _ in range(300):
            ex = task.sample(rng)
            f.write(json.dumps({"prompt": ex.prompt, "response": ex.solution}) + "\n")
    with (tmp / "problems.jsonl").open("w") as f:
        for ex in task.eval_examples():
            f.write(json.dumps({"id": ex.id, "prompt": ex.prompt, "answer": ex.answer}) + "\n")
    spec = {
        "name": "mini-r1",
        "output_dir": str(tmp / "runs"),
        # A random model (no pre-training to wait for): the cold start teaches it the answer format.
        "model": {"path": str(save_random_model(tmp / "base")), "max_prompt_len": 16, "max_response_len": 40},
        "data": {"eval_size": 16, "eval_samples": 2},
        "rollout": {"gpu_memory_utilization": 0.1},
        "learner": {"micro_batch_size": 64},
        "cluster": {"dashboard_port": _free_port()},
        "stages": [
            {
                "name": "cold_start",
                "kind": "sft",
                "sft": {"train": str(tmp / "cold_start.jsonl"), "epochs": 1, "batch_size": 32, "generate_eval": False},
                "learner": {"lr": 1.0e-3},
            },
            {
                "name": "rl",
                "kind": "rl",
                "model": {"from": "cold_start"},
                "checkpoint_every": 1,
                # One step off-policy: the next batch samples while the learner trains (engine logprobs as
                # the behaviour policy), here across a SIGTERM and a resume.
                "grpo": {"steps": 6, "prompts_per_step": 8, "group_size": 4, "async_rollouts": True},
            },
            {
                "name": "rejection",
                "kind": "sample",
                "model": {"from": "rl"},
                "sample": {"prompts": 16, "samples": 4, "keep_per_prompt": 2, "require_correct": False},
            },
            {
                "name": "final",
                "kind": "eval",
                "model": {"from": "rl"},
                "eval": {"data": str(tmp / "problems.jsonl"), "samples": 4},
            },
        ],
    }
    path = tmp / "mini-r1.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
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
        while not (root / "2-rl" / "checkpoints" / "step-1" / "driver_state.json").is_file():
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
    assert "stage 1-cold_start (sft)" in first
    # SIGTERM: the step finished, a checkpoint was written, exit 0 with how to resume
    assert "SIGTERM: finishing this step" in first and "resume with: r1ray pipeline --config" in first
    assert "stage 1-cold_start (sft) is complete, skipped" in second
    assert "stage 2-rl (rl), resumed" in second
    assert "resumed from" in second
    for folder in ("1-cold_start", "2-rl", "3-rejection", "4-final"):
        assert (root / folder / "stage.json").is_file(), folder
    report = json.loads((root / "pipeline_report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["1-cold_start", "2-rl", "3-rejection", "4-final"]


def test_sft_stage_lowers_held_out_loss(pipeline_run):
    root, _, _ = pipeline_run
    summary = json.loads((root / "1-cold_start" / "summary.json").read_text())
    assert summary["eval_loss_after"] < summary["eval_loss_before"] - 0.1
    stage = json.loads((root / "1-cold_start" / "stage.json").read_text())
    assert Path(stage["output"]).is_dir() and (Path(stage["output"]) / "model.safetensors").is_file()
    rl = yaml.safe_load((root / "2-rl" / "config.yaml").read_text())
    assert rl["model"]["path"] == stage["output"]


def test_rl_stage_ran_all_steps_one_step_off_policy(pipeline_run):
    root, _, second = pipeline_run
    rows = [json.loads(line) for line in (root / "2-rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    resumed_at = int(second.split("resumed from ")[1].split(" at step ")[1].split()[0])
    for row in rows:
        # the first step of a run (and of a resume) samples with the newest weights; later ones one step behind
        fresh = row["step"] in (1, resumed_at + 1)
        assert row["rollout/staleness"] == (0 if fresh else 1), row["step"]
        assert row["rollout/logprob_diff_max"] < 1e-3


def test_sample_stage_writes_rows_with_provenance_and_yield(pipeline_run):
    root, _, _ = pipeline_run
    rows = [json.loads(line) for line in (root / "3-rejection" / "data.jsonl").read_text().splitlines()]
    yields = json.loads((root / "3-rejection" / "yield.json").read_text())
    assert yields["sampled"] == 64 and yields["kept"] == len(rows) and yields["prompts"] == 16
    assert yields["kept"] <= 2 * 16
    rl_model = json.loads((root / "2-rl" / "stage.json").read_text())["output"]
    for row in rows:
        assert row["prompt"] and row["response"] and set(row["rewards"]) >= {"exact", "format"}
        assert row["source"]["model"] == rl_model and row["source"]["stage"] == "3-rejection"
        assert row["source"]["sampling"]["samples"] == 4
        assert row["rewards"]["format"] == 1.0  # sample.require_format is on by default
    per_prompt = {}
    for row in rows:
        per_prompt[row["id"]] = per_prompt.get(row["id"], 0) + 1
    assert max(per_prompt.values(), default=0) <= 2


def test_eval_stage_report_agrees_with_its_per_sample_table(pipeline_run):
    root, _, _ = pipeline_run
    report = json.loads((root / "4-final" / "report.json").read_text())
    problems = report["per_problem"]
    assert len(problems) == 16 and all(len(p["samples"]) == 4 for p in problems)
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
