"""End to end: `r1ray train` on the demo config (shortened) with real Ray, vLLM and FSDP2, then resume."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REQUIRED = [
    "step",
    "policy_version",
    "reward/mean",
    "reward/accuracy",
    "reward/format",
    "response_length/mean",
    "loss",
    "kl",
    "time/step_s",
    "time/rollout_s",
    "time/reward_s",
    "time/train_s",
    "time/weight_sync_s",
    "throughput/tokens_per_s",
    "rollout/logprob_diff_max",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    args = [
        sys.executable, "-m", "cluster", "train",
        "--set", f"output_dir={out}",
        "--set", "name=e2e",
        "--set", "model.builtin_pretrain_steps=20",
        "--set", "data.eval_size=16",
        "--set", "data.eval_samples=2",
        "--set", "grpo.prompts_per_step=8",
        "--set", "checkpoint_every=1",
        "--set", f"cluster.dashboard_port={_free_port()}",
        *extra,
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = _train(out, "--set", "grpo.steps=2")
    return out / "e2e", proc


def test_console_shows_dashboard_progress_and_table(run):
    _, proc = run
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "step    2/2 |" in proc.stdout
    assert "pass@1 (sampled)" in proc.stdout


def test_metrics_every_step_with_proven_sync(run):
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(REQUIRED) <= row.keys()
        assert row["rollout/logprob_diff_max"] < 1e-3
        # the engines sampled with the weights broadcast after the previous step
        assert row["rollout/policy_version"] == row["step"] - 1


def test_summary_plots_tensorboard_config(run):
    run_dir, _ = run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        figures = {"accuracy", "greedy_accuracy", "format_rate", "response_length", "long_share", "pass_at_k"}
        assert figures <= summary[key].keys()
        assert 0.0 <= summary[key]["accuracy"] <= 1.0 and summary[key]["response_length"] > 0
    assert summary["steps"] == 2 and summary["wall_s"] > 0
    assert {"curves.png", "reward.png", "accuracy.png", "response_length.png", "long_share.png", "kl.png"} <= {
        p.name for p in (run_dir / "plots").iterdir()
    }
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "group_size: 8" in (run_dir / "config.yaml").read_text()


def test_checkpoint_loads_in_transformers(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = run[0] / "checkpoints" / "step-2"
    assert {"model.safetensors", "config.json", "trainer_state.pt", "driver_state.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = AutoTokenizer.from_pretrained(ckpt)("123+456=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_resume_continues_from_the_last_checkpoint(run):
    run_dir, _ = run
    proc = _train(run_dir.parent, "--resume", str(run_dir), "--set", "grpo.steps=3")
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    # the engines start from the checkpoint's weights: checked on held-out prompts before the first step
    gap = float(proc.stdout.split("weights in sync: engine vs learner logprob gap ")[1].split()[0])
    assert gap < 1e-3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[2]["rollout/logprob_diff_max"] < 1e-3
    assert rows[2]["rollout/policy_version"] == 2, "the engines report the checkpoint's policy version"
    driver_state = json.loads((run_dir / "checkpoints" / "step-3" / "driver_state.json").read_text())
    assert driver_state["data_position"] == 3 * 8
