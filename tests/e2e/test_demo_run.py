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
def runs(tmp_path_factory) -> Path:
    """One output folder for the module's runs, so the builtin base model is pre-trained once."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def run(runs):
    """A 3-step run SIGKILLed right after its step-2 checkpoint, then resumed with ``--resume``."""
    out = runs
    killed = _train(out, "--set", "grpo.steps=3", kill_after=2)
    assert "checkpoint: " in killed.stdout and "step    2/3 |" in killed.stdout
    return out / "e2e", _train(out, "--resume", str(out / "e2e"))


@pytest.fixture(scope="module")
def straight(runs):
    """The same 3 steps, uninterrupted."""
    out = runs
    _train(out, "--set", "grpo.steps=3", name="straight")
    return out / "straight"


def test_console_shows_dashboard_progress_and_table(run):
    _, proc = run
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "step    3/3 |" in proc.stdout
    assert "pass@1 (sampled)" in proc.stdout


def test_metrics_every_step_with_proven_sync(run):
    run_dir, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # each step once, though step 3 may have run twice
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
    assert summary["steps"] == 3 and summary["wall_s"] > 0
    assert {"curves.png", "reward.png", "accuracy.png", "response_length.png", "long_share.png", "kl.png"} <= {
        p.name for p in (run_dir / "plots").iterdir()
    }
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "group_size: 8" in (run_dir / "config.yaml").read_text()


def test_checkpoint_loads_in_transformers(run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = run[0] / "checkpoints" / "step-3"
    assert {"model.safetensors", "config.json", "generation_config.json", "trainer_state.pt", "driver_state.json"} <= {
        p.name for p in ckpt.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ids = AutoTokenizer.from_pretrained(ckpt)("123+456=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_resume_continues_from_the_last_checkpoint(run):
    run_dir, proc = run
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    # the engines start from the checkpoint's weights: checked on held-out prompts before the first step
    gap = float(proc.stdout.split("weights in sync: engine vs learner logprob gap ")[1].split()[0])
    assert gap < 1e-3
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["rollout/logprob_diff_max"] < 1e-3
    assert rows[2]["rollout/policy_version"] == 2, "the engines report the checkpoint's policy version"
    driver_state = json.loads((run_dir / "checkpoints" / "step-3" / "driver_state.json").read_text())
    assert driver_state["data_position"] == 3 * 8


def test_resumed_run_matches_an_uninterrupted_one(run, straight):
    """Engines re-seeded from the prompt stream's position: after a SIGKILL and a resume, step 3 samples the
    same tokens and takes the same update as a run that was never interrupted."""
    resumed = [json.loads(line) for line in (run[0] / "metrics.jsonl").read_text().splitlines()]
    uninterrupted = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in uninterrupted] == [1, 2, 3]
    for a, b in zip(resumed, uninterrupted, strict=True):
        for key in ("reward/mean", "response_length/mean", "response_length/max", "reward/format"):
            assert a[key] == b[key], (a["step"], key)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), a["step"]


# rollout-0 dies as step 2's generate is sent and again between steps 2 and 3 (before the weight push), reward-0
# as step 2's scoring is sent, reference-0 (this run keeps the reference model in an actor of its own) as step 2's
# reference logprobs are asked for, learner-0 as step 3's update is: each call is lost and must be re-issued.
# Those are the five restarts cluster.max_restarts allows; rollout-0 dies a third time as the final evaluation's
# first generate is sent (generate calls: 2 of the first evaluation, steps 1-3, step 3 again after the learner's
# restart, then the 7th), and the run stops there.
FAULTS = "rollout-0@generate:4,rollout-0@sync:3,reward-0@score:4,reference-0@reference:2,learner-0@train:3"
FAULTS += ",rollout-0@generate:7"


@pytest.fixture(scope="module")
def faulty(runs):
    out = runs
    extra = ["--set", "grpo.steps=3", "--set", "cluster.max_restarts=5", "--set", "learner.reference=actor"]
    extra += ["--set", "learner.reference_cpus=2"]  # the threads of the straight run's learner: the same sums
    proc = _train(out, *extra, name="faulty", faults=FAULTS, rc=1)
    return out / "faulty", proc


def test_the_run_survives_dead_actors_and_takes_the_same_steps(faulty, straight):
    """Engines, scorers and the reference actor are re-created and their calls re-issued; a dead learner restarts
    the actors from the last checkpoint. Every step is logged once, and (re-seeded engines) the run equals an
    undisturbed one, whose learner holds the reference itself: the reference actor's logprobs are the same."""
    run_dir, proc = faulty
    out = proc.stdout
    assert out.count("fault: rollout-0 died") == 2 and out.count("fault: reward-0 died") == 1
    assert out.count("fault: reference-0 died") == 1
    assert "restarting the learner ranks from the checkpoint of step 2" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (rows[-1]["faults/rollout_restarts"], rows[-1]["faults/scorer_restarts"]) == (2, 1)
    assert rows[-1]["faults/learner_restarts"] == 1 and rows[-1]["faults/reference_restarts"] == 1
    assert all(r["rollout/logprob_diff_max"] < 1e-3 for r in rows)  # the re-created engine got the weights
    uninterrupted = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, uninterrupted, strict=True):
        for key in ("reward/mean", "response_length/mean", "response_length/max"):
            assert a[key] == b[key], (a["step"], key)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6), a["step"]


def test_past_max_restarts_the_run_stops_with_one_line_and_keeps_its_steps(faulty):
    """The sixth death is one more than cluster.max_restarts: the run stops with one line, no traceback, and
    keeps its last update (the final evaluation it died in is what a resume would do)."""
    run_dir, proc = faulty
    assert "r1ray: error: rollout-0 died" in proc.stderr + proc.stdout
    assert "cluster.max_restarts (5) reached" in proc.stdout + proc.stderr
    assert f"the last checkpoint resumes with: r1ray train --resume {run_dir}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (run_dir / "checkpoints" / "step-3" / "model.safetensors").is_file()
