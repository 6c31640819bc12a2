"""Reward scorer: rule-based rewards for a batch of completions, every call under a hard deadline.

``Scorer`` is the plain class; ``RewardScorer`` its Ray actor, named ``reward-<i>`` (a small pool
of them splits each batch). Completions are scored in chunks inside killable worker processes; a
chunk that overruns or fails is re-scored one completion and one reward at a time, so only the
offending pair scores 0, and it is counted in ``reward/timeouts`` or ``reward/errors``. What runs in
the workers lives in ``rewards.registry`` (pure Python), so a fresh worker imports no Ray, torch or
pydantic inside a deadline.
The R1-Zero ``format`` reward is always among the components (weight 0 unless configured), so
every batch reports its format rate, scored under the same deadline, for the configured template.
"""

from __future__ import annotations

import time

import numpy as np
import ray

from cluster.payloads import Scores
from rewards import WeightedReward
from rewards.deadline import DeadlineExecutor
from rewards.registry import RowInfo, score_one, score_rows

CHUNK = 64


class Scorer:
    def __init__(
        self,
        weights: dict[str, float],
        timeout_s: float = 5.0,
        *,
        think_opened: bool = False,
        workers: int = 1,
        only: dict[str, list[str]] | None = None,
    ) -> None:
        self.configure(weights, timeout_s, think_opened=think_opened, only=only)
        self.executor = DeadlineExecutor(max_workers=workers, startup_in_deadline=False)
        # A cold spawn inside a Ray actor takes seconds; start the worker before the first deadline.
        self.executor.warm_up(workers)

    def configure(
        self,
        weights: dict[str, float],
        timeout_s: float = 5.0,
        *,
        think_opened: bool = False,
        only: dict[str, list[str]] | None = None,
    ) -> None:
        """Score with these rewards from the next call on (the worker processes stay: they are handed the rewards
        with each chunk)."""
        self.weights = {**weights, "format": weights.get("format", 0.0)}
        self.think_opened = think_opened
        self.reward = WeightedReward(self.weights, think_opened=think_opened, only=only)
        self.timeout_s = timeout_s

    def score(self, completions: list[str], answers: list[str], info: list[RowInfo] | None = None) -> Scores:
        """``info``: each completion's target language and task (default: English, no task)."""
        info = info or [RowInfo()] * len(completions)
        if not len(completions) == len(answers) == len(info):
            raise ValueError(f"{len(completions)} completions, {len(answers)} answers, {len(info)} row infos")
        start = time.perf_counter()
        rows: list[dict[str, float]] = []
        counts = {"timeout": 0, "error": 0}
        messages: list[str] = []
        for i in range(0, len(completions), CHUNK):
            chunk = completions[i : i + CHUNK], answers[i : i + CHUNK], info[i : i + CHUNK]
            outcome = self.executor.run(score_rows, self.reward, *chunk, timeout=self.timeout_s)
            if outcome.status == "ok":
                rows.extend(outcome.value)
            else:
                rows.extend(self._one_by_one(c, a, r, counts, messages) for c, a, r in zip(*chunk, strict=True))
        names = self.reward.names
        components = {n: np.array([r[n] for r in rows], dtype=np.float32) for n in names}
        total = sum((self.weights[n] * components[n] for n in names), np.zeros(len(rows), dtype=np.float32))
        return Scores(
            total=total,
            components=components,
            timeouts=counts["timeout"],
            errors=counts["error"],
            seconds=time.perf_counter() - start,
            error_messages=messages,
        )

    def _one_by_one(
        self, completion: str, answer: str, info: RowInfo, counts: dict[str, int], messages: list[str]
    ) -> dict[str, float]:
        row = {}
        for name in self.reward.names:
            if not self.reward.applies(name, info):
                row[name] = 0.0
                continue
            outcome = self.executor.run(
                score_one, name, self.think_opened, completion, answer, info, timeout=self.timeout_s
            )
            row[name] = outcome.value if outcome.status == "ok" else 0.0
            if outcome.status != "ok":
                counts[outcome.status] += 1
                messages.append(f"{name}: {outcome.status}: {outcome.error}")
        return row

    def close(self) -> None:
        self.executor.close()


RewardScorer = ray.remote(Scorer)
