"""The RL stage's batch collection, including DAPO dynamic sampling, against a scripted stand-in fleet.

Only the stage's bookkeeping is under test here (which groups are kept, how many prompts are
drawn); the real actors are covered in tests/ray and tests/e2e.
"""

import numpy as np
import pytest

from cluster.config import RunConfig
from cluster.data.prompts import PromptFormat, Prompts
from cluster.data.tasks import Example
from cluster.payloads import Rollouts, Scores
from cluster.stages.rl import collect


class ScriptedFleet:
    """Answers generate/score like the real Fleet; a group is informative when its prompt ends in '1='."""

    def __init__(self):
        self.generated = 0

    def generate(self, prompt_ids, group_size, sampling, seed=None):
        n = len(prompt_ids) * group_size
        self.generated += len(prompt_ids)
        tokens = np.ones((n, 3), dtype=np.int32)
        self.last = prompt_ids
        return Rollouts(
            group_size=group_size,
            prompt_ids=prompt_ids,
            tokens=tokens,
            lengths=np.full(n, 3, np.int32),
            logprobs=None,
            texts=["x"] * n,
            finish_reasons=["stop"] * n,
            policy_version=0,
            gen_seconds=0.5,
        )

    def reference_logprobs(self, rollouts, temperature):
        return None  # the learner ranks hold the reference

    def score(self, texts, answers, info=None):
        g = len(texts) // len(self.last)
        rewards = np.concatenate([np.tile([1.0, 0.0], g // 2) if p[-2] == 1 else np.zeros(g) for p in self.last])
        return Scores(total=rewards.astype(np.float32), components={"exact": rewards.astype(np.float32)}, seconds=0.25)


class CharTokenizer:
    def __call__(self, text):
        return {"input_ids": [int(c) if c.isdigit() else 10 for c in text]}


class ScriptedStream:
    def __init__(self, prompts):
        self.prompts, self.position = prompts, 0

    def take(self, n):
        out = [Example(prompt=p, answer="0") for p in self.prompts[self.position : self.position + n]]
        self.position += n
        return out


def _prompts(cfg, sequence):
    prompts = Prompts.__new__(Prompts)
    prompts.tokenizer, prompts.max_len = CharTokenizer(), 16
    prompts.format = PromptFormat(cfg, prompts.tokenizer)
    prompts.train = ScriptedStream(sequence)
    return prompts


def _cfg(dynamic: bool, rounds: int = 3) -> RunConfig:
    return RunConfig.model_validate(
        {
            "grpo": {
                "prompts_per_step": 4,
                "group_size": 4,
                "dynamic_sampling": dynamic,
                "max_sampling_rounds": rounds,
            },
            "reward": {"weights": {"exact": 1.0}},
        }
    )


def test_without_dynamic_sampling_every_group_is_kept():
    cfg = _cfg(False)
    batch = collect(ScriptedFleet(), _prompts(cfg, ["1=", "2=", "1=", "2="]), cfg)
    assert batch.prompts_sampled == 4 and batch.data_position == 4
    assert batch.rollouts.num_completions == 16 and len(batch.scores) == 16
    assert batch.rollouts.gen_seconds == 0.5 and batch.scores.seconds == 0.25


def test_dynamic_sampling_refills_with_informative_groups():
    cfg = _cfg(True)
    sequence = ["1=", "2=", "2=", "1=", "1=", "2=", "1=", "2=", "2=", "2="]
    prompts = _prompts(cfg, sequence)
    prompts.train.position = 0
    batch = collect(ScriptedFleet(), prompts, cfg)
    groups = batch.scores.total.reshape(4, 4)
    assert (groups.std(axis=1) > 0).all(), "an all-equal group slipped in"
    # round 1 draws 4 (2 informative), round 2 draws the 2 missing (1), round 3 the last one
    assert batch.prompts_sampled == 7 and batch.data_position == 7
    # every group's rows travel together: the prompt of group i is the one its completions answer
    assert [p[-2] for p in batch.rollouts.prompt_ids] == [1, 1, 1, 1]
    # phases of the three rounds add up
    assert batch.rollouts.gen_seconds == pytest.approx(1.5) and batch.scores.seconds == pytest.approx(0.75)


@pytest.mark.parametrize("rounds", [1, 2])
def test_dynamic_sampling_pads_with_flat_groups_when_rounds_run_out(rounds):
    cfg = _cfg(True, rounds)
    prompts = _prompts(cfg, ["2=", "1=", "2=", "2="] * 3)
    batch = collect(ScriptedFleet(), prompts, cfg)
    assert batch.rollouts.num_completions == 16, "the batch keeps its configured size"
    assert batch.prompts_sampled == 4 + 3 * (rounds - 1)
    informative = int((batch.scores.total.reshape(4, 4).std(axis=1) > 0).sum())
    assert informative == rounds


class ReferenceFleet(ScriptedFleet):
    """As ScriptedFleet, with a reference actor whose table tags each row with its prompt and its sample index."""

    def reference_logprobs(self, rollouts, temperature):
        self.asked = rollouts
        g = rollouts.group_size
        rows = np.arange(rollouts.num_completions)
        tags = np.array([100.0 * rollouts.prompt_ids[r // g][-2] + r % g for r in rows], dtype=np.float32)
        return np.repeat(tags[:, None], rollouts.tokens.shape[1], axis=1)


def test_the_reference_table_is_computed_for_the_kept_groups_and_reaches_the_train_batch():
    from cluster.stages.rl import train_batch

    cfg = _cfg(True)
    prompts = _prompts(cfg, ["1=", "2=", "2=", "1=", "1=", "2=", "1=", "2=", "2=", "2="])
    fleet = ReferenceFleet()
    sampled = collect(fleet, prompts, cfg)
    assert fleet.asked is sampled.rollouts  # once, on the batch as kept, not per sampling round
    want = np.repeat((100.0 + np.arange(16) % 4)[:, None], 3, axis=1)
    np.testing.assert_array_equal(sampled.ref_logprobs, want)
    batch = train_batch(sampled, cfg, check_engine=False)
    np.testing.assert_array_equal(batch.ref_logprobs, want)
    np.testing.assert_array_equal(batch.select(np.array([5, 2])).ref_logprobs[:, 0], [101.0, 102.0])
