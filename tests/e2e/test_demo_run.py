"""End to end: `r1ray train` on the demo config (shortened) with real Ray, vLLM and FSDP2, then resume."""

import json
import os
import signal
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


def _train(
    out: Path, *extra: str, name: str = "e2e", kill_after: int | None = None, faults: str = "", rc: int = 0
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    if faults:
        env["R1RAY_FAULTS"] = faults
    if kill_after is not None:
        env["R1RAY_KILL_AFTER_CHECKPOINT"] = str(kill_after)
    args = [
        sys.executable, "-m", "cluster", "train",
        "--set", f"output_dir={out}",
        "--set", f"name={name}",
        "--set", "model.builtin_pretrain_steps=20",
        "--set", "data.eval_size=16",
        "--set", "data.eval_samples=2",
        "--set", "grpo.prompts_per_step=8",
        "--set", "checkpoint_every=1",
        "--set", f"cluster.dashboard_port={_free_port()}",
        *extra,
    ]  # fmt: skip
    child = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = child.communicate(timeout=900)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # whatever of a killed driver's local Ray cluster outlived it
        except ProcessLookupError:
            pass
    proc = subprocess.CompletedProcess(args, child.returncode, stdout, stderr)
    want = -signal.SIGKILL if kill_after is not None else rc
    assert proc.returncode == want, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def straight(runs_root):
    """3 steps, undisturbed: what the disturbed run below must equal, step for step."""
    proc = _train(runs_root, "--set", "grpo.steps=3", name="straight")
    return runs_root / "straight", proc


# The disturbed run, in two processes. The first keeps the reference model in an actor of its own and loses an
# actor of every kind in step 2: rollout-0 as step 2's generate is sent (generate calls: 2 of the first
# evaluation, then one a step), reward-0 as step 2's scoring is, reference-0 as step 2's reference logprobs
# are asked for, learner-0 as step 2's update is (the learner ranks restart from the step-1 checkpoint and step
# 2 runs again), and rollout-0 once more as the push after step 2 is sent (syncs: one as each run starts, one
# after each step): each call is lost and must be re-issued, five restarts, as many as cluster.max_restarts
# allows. The driver is SIGKILLed right after its step-2 checkpoint. The second process resumes it with
# cluster.max_restarts 0; rollout-0 dies as the final evaluation's first generate is sent (the second of this
# process, after step 3's), and the run stops there.
FAULTS = "rollout-0@generate:4,reward-0@score:4,reference-0@reference:2,learner-0@train:2,rollout-0@sync:4"
RESUME_FAULTS = "rollout-0@generate:2"


@pytest.fixture(scope="module")
def faulty(runs_root):
    extra = ["--set", "grpo.steps=3", "--set", "cluster.max_restarts=5", "--set", "learner.reference=actor"]
    extra += ["--set", "learner.reference_cpus=2"]  # the threads of the straight run's learner: the same sums
    killed = _train(runs_root, *extra, name="faulty", faults=FAULTS, kill_after=2)
    assert "checkpoint: " in killed.stdout and "step    2/3 |" in killed.stdout  # killed after it, as planned
    run_dir = runs_root / "faulty"
    resumed = _train(runs_root, "--resume", str(run_dir), "--set", "cluster.max_restarts=0", faults=RESUME_FAULTS, rc=1)
    return run_dir, killed, resumed


def test_console_shows_dashboard_progress_and_table(straight):
    _, proc = straight
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "step    3/3 |" in proc.stdout
    assert "pass@1 (sampled)" in proc.stdout


def test_metrics_every_step_with_proven_sync(straight, faulty):
    for run_dir in (straight[0], faulty[0]):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        # each step once, though in the disturbed run step 2 ran twice (the learner's restart)
        assert [r["step"] for r in rows] == [1, 2, 3], run_dir
        for row in rows:
            assert set(REQUIRED) <= row.keys()
            assert row["rollout/logprob_diff_max"] < 1e-3
            # the engines sampled with the weights broadcast after the previous step
            assert row["rollout/policy_version"] == row["step"] - 1


def test_summary_plots_tensorboard_config(straight):
    run_dir, _ = straight
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        figures = {"accuracy", "greedy_accuracy", "format_rate", "response_length", "long_share", "pass_at_k"}
        assert figures <= summary[key].keys()
        assert 0.0 <= summary[key]["accuracy"] <= 1.0 and summary[key]["response_length"] > 0
    assert summary["steps"] == 3 and summary["wall_s"] > 0
    assert {"curves.png", "reward.png", "accuracy.png", "response_length.png", "long_share.png", "kl.png"} <= {
        p.name for p in (run_dir / "plots").iterdir()
    }
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "group_size: 8" in (run_dir / "config.yaml").read_text()


def test_checkpoint_loads_in_transformers(straight):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = straight[0] / "checkpoints" / "step-3"
    assert {"model.safetensors", "config.json", "generation_config.json", "trainer_state.pt", "driver_state.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = AutoTokenizer.from_pretrained(ckpt)("123+456=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_the_run_survives_dead_actors(faulty):
    """Engines, scorers and the reference actor are re-created and their calls re-issued; a dead learner restarts
    the learner ranks from the last checkpoint."""
    run_dir, killed, _ = faulty
    out = killed.stdout
    assert out.count("fault: rollout-0 died") == 2 and out.count("fault: reward-0 died") == 1
    assert out.count("fault: reference-0 died") == 1
    assert "restarting the learner ranks from the checkpoint of step 1" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert (rows[1]["faults/rollout_restarts"], rows[1]["faults/scorer_restarts"]) == (2, 1)
    assert rows[1]["faults/learner_restarts"] == 1 and rows[1]["faults/reference_restarts"] == 1


def test_resume_continues_from_the_last_checkpoint(faulty):
    run_dir, _, resumed = faulty
    assert "resumed from" in resumed.stdout and "at step 2" in resumed.stdout
    # the engines start from the checkpoint's weights: checked on held-out prompts before the first step
    gap = float(resumed.stdout.split("weights in sync: engine vs learner logprob gap ")[1].split()[0])
    assert gap < 1e-3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["rollout/logprob_diff_max"] < 1e-3
    assert rows[2]["rollout/policy_version"] == 2, "the engines report the checkpoint's policy version"
    driver_state = json.loads((run_dir / "checkpoints" / "step-3" / "driver_state.json").read_text())
    assert driver_state["data_position"] == 3 * 8


def test_the_disturbed_run_takes_the_same_steps_as_an_undisturbed_one(faulty, straight):
    """Re-issued calls, a learner restarted from a checkpoint, a SIGKILLed driver resumed: engines re-seeded from
    the prompt stream's position, every step samples the same tokens and takes the same update as the run that
    was never disturbed, whose learner holds the reference itself (the reference actor's logprobs are the same)."""
    disturbed = [json.loads(line) for line in (faulty[0] / "metrics.jsonl").read_text().splitlines()]
    undisturbed = [json.loads(line) for line in (straight[0] / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(disturbed, undisturbed, strict=True):
        for key in ("reward/mean", "response_length/mean", "response_length/max", "reward/format"):
            assert a[key] == b[key], (a["step"], key)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), a["step"]


def test_past_max_restarts_the_run_stops_with_one_line_and_keeps_its_steps(faulty):
    """A death past cluster.max_restarts (0 in the resumed process) stops the run with one line, no traceback,
    and keeps its last update (the final evaluation it died in is what a resume would do)."""
    run_dir, _, proc = faulty
    assert "r1ray: error: rollout-0 died" in proc.stderr + proc.stdout
    assert "cluster.max_restarts (0) reached" in proc.stdout + proc.stderr
    assert f"the last checkpoint resumes with: r1ray train --resume {run_dir}" in proc.stderr
    assert "Traceback" not in proc.stderr
    # the step-3 update is written by the abort: the loop checkpoints no last step before the final evaluation
    assert (run_dir / "checkpoints" / "step-3" / "model.safetensors").is_file()
