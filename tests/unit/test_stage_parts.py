"""The RL stage's shared parts without Ray: rollout schedule, behaviour policy, sampling specs, evaluation."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.config import RunConfig
from cluster.payloads import Rollouts, Scores
from cluster.stages.common import sampling_spec
from cluster.stages.evaluate import EvalResult, eval_result
from cluster.stages.rl import RolloutSchedule, behaviour_policy, worse_gap


class CountingSampler:
    """Stands in for `collect`: returns 1, 2, 3, ... and records from which thread and when."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.delay, self.threads = 0, delay, []

    def __call__(self):
        time.sleep(self.delay)
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        return self.calls


def test_synchronous_schedule_samples_when_asked():
    sample = CountingSampler()
    schedule = RolloutSchedule(sample, ahead=False)
    assert [schedule.batch(prefetch=True) for _ in range(3)] == [1, 2, 3]
    assert sample.calls == 3 and set(sample.threads) == {threading.main_thread().name}
    schedule.close()


def test_one_step_off_schedule_samples_the_next_batch_during_the_step():
    sample = CountingSampler(delay=0.05)
    schedule = RolloutSchedule(sample, ahead=True)
    assert schedule.batch(prefetch=True) == 1
    schedule.settle()  # the engines finish the next batch before taking new weights
    assert sample.calls == 2, "the next batch was sampled while this step trained"
    assert schedule.batch(prefetch=False) == 2  # the last step starts nothing new
    schedule.settle()
    assert sample.calls == 2
    schedule.close()


@pytest.mark.parametrize(
    ("grpo", "expected"),
    [
        ({}, "learner"),  # one on-policy update: the training forward is its own old policy
        ({"mini_batches": 4}, "rollout"),
        ({"mini_batches": 4, "old_logprobs": "learner"}, "learner"),
        ({"epochs": 2, "old_logprobs": "rollout"}, "rollout"),
        ({"async_rollouts": True}, "rollout"),
        ({"async_rollouts": True, "old_logprobs": "learner"}, "rollout"),  # stale rollouts: only the engine knows
    ],
)
def test_behaviour_policy(grpo, expected):
    cfg = RunConfig.model_validate({"grpo": {"prompts_per_step": 4, "group_size": 4, **grpo}})
    assert behaviour_policy(cfg) == expected


def test_two_sync_checks_report_the_larger_gap_and_both_times():
    deferred = {"rollout/logprob_diff_max": 2e-6, "rollout/logprob_diff_mean": 1e-7, "time/sync_check_s": 0.01}
    last = {"rollout/logprob_diff_max": 1e-6, "rollout/logprob_diff_mean": 3e-7, "time/sync_check_s": 0.08}
    pushed = {"time/weight_sync_s": 0.07}
    assert worse_gap(deferred, last | pushed) == {
        "rollout/logprob_diff_max": 2e-6,
        "rollout/logprob_diff_mean": 3e-7,
        "time/sync_check_s": pytest.approx(0.09),
        "time/weight_sync_s": 0.07,
    }
    assert worse_gap({}, pushed) == pushed and worse_gap(deferred, pushed) == deferred | pushed


def test_sampling_specs_come_from_one_place():
    cfg = RunConfig.model_validate({"rollout": {"temperature": 0.7, "top_p": 0.9, "stop": ["</answer>"]}})
    train, sampled, greedy = (sampling_spec(cfg, k) for k in ("train", "eval", "greedy"))
    assert (train.temperature, train.top_p, train.logprobs) == (0.7, 0.9, True)
    assert (sampled.temperature, sampled.top_p, sampled.logprobs) == (0.7, 1.0, False)
    assert greedy.temperature == 0.0 and greedy.stop == ("</answer>",)
    assert train.max_tokens == cfg.model.max_response_len
    with pytest.raises(ValueError, match="unknown sampling kind"):
        sampling_spec(cfg, "beam")


def _rollouts(texts: list[str], lengths: list[int], group_size: int) -> Rollouts:
    n = len(texts)
    return Rollouts(
        group_size=group_size,
        prompt_ids=[np.array([1, 2], dtype=np.int32)] * (n // group_size),
        tokens=np.ones((n, max(lengths)), dtype=np.int32),
        lengths=np.array(lengths, dtype=np.int32),
        logprobs=None,
        texts=texts,
        finish_reasons=["stop"] * n,
        policy_version=0,
    )


def _scores(correct: list[float]) -> Scores:
    values = np.array(correct, dtype=np.float32)
    return Scores(total=values, components={"exact": values, "format": np.ones_like(values)})


def test_eval_result_reports_what_tells_reasoning_from_sharpening():
    # two problems x 4 samples; problem 0's majority answer (5) is right, problem 1's (7) is wrong
    texts = [
        "<think>a</think><answer>5</answer>", "<think></think><answer>5</answer>",
        "<think></think><answer>4</answer>", "<think>b</think><answer>5</answer>",
        "<think></think><answer>7</answer>", "<think></think><answer>7</answer>",
        "<think>c</think><answer>8</answer>", "<think></think><answer>6</answer>",
    ]  # fmt: skip
    correct = [1, 1, 0, 1, 0, 0, 0, 1]
    lengths = [30, 8, 8, 32, 8, 8, 30, 8]
    greedy_texts = ["<think></think><answer>5</answer>", "<think>x</think><answer>6</answer>"]
    result = eval_result(
        3, "exact", _rollouts(texts, lengths, 4), _scores(correct), _rollouts(greedy_texts, [8, 30], 1), _scores([1, 1])
    )
    assert result.accuracy == pytest.approx(4 / 8) and result.greedy_accuracy == 1.0
    assert result.length_correct == pytest.approx((30 + 8 + 32 + 8) / 4)
    assert result.length_incorrect == pytest.approx((8 + 8 + 8 + 30) / 4)
    assert result.long_share == pytest.approx(3 / 8) and result.greedy_long_share == 0.5
    assert result.greedy_length == 19.0
    assert result.pass_at_k["1"] == pytest.approx(0.5)
    assert result.pass_at_k["4"] == 1.0 and set(result.pass_at_k) == {"1", "2", "4"}
    assert result.cons_at_k == 0.5
    assert EvalResult.from_dict(result.to_dict()) == result


def test_eval_results_of_older_checkpoints_still_load():
    old = {"step": 50, "accuracy": 0.5, "format_rate": 0.9, "response_length": 33.0, "greedy_accuracy": 0.8}
    loaded = EvalResult.from_dict(old)
    assert loaded.greedy_accuracy == 0.8 and loaded.length_correct is None and loaded.pass_at_k is None


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(tmp_path):
    from cluster.stages import checkpoint

    def write(path):
        (Path(path) / "model.safetensors").write_text("weights")

    first = checkpoint.save(tmp_path, 1, write, {"step": 1}, keep=2)

    def crash(path):
        (Path(path) / "model.safetensors").write_text("half")
        raise RuntimeError("node lost")

    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path, 2, crash, {"step": 2}, keep=2)
    assert checkpoint.latest(tmp_path) == first
    assert checkpoint.load_driver_state(first) == {"step": 1}
    assert (tmp_path / "checkpoints" / "step-2.tmp").is_dir()  # left for inspection, never resumed from
    second = checkpoint.save(tmp_path, 2, write, {"step": 2}, keep=2)
    assert checkpoint.latest(tmp_path) == second and not (tmp_path / "checkpoints" / "step-2.tmp").exists()
