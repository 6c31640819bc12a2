"""The check that proves weight sync: the engine's and the learner's logprobs of the same tokens agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOGPROB_DIFF_MAX = "rollout/logprob_diff_max"
LOGPROB_DIFF_MEAN = "rollout/logprob_diff_mean"


def logprob_gap(
    learner: np.ndarray,
    engines: Sequence[Sequence[np.ndarray]],
    prompt_lens: np.ndarray,
    response_lens: np.ndarray,
) -> dict[str, float]:
    """Largest and mean |engine - learner| logprob over every response token, across every engine.

    ``learner`` is (B, R): the learner's logprob of response token j of row i. ``engines[e][i]`` is engine
    e's logprob of every token of row i's whole sequence given the tokens before it (index 0 unused).
    """
    if learner.shape[0] != len(prompt_lens) or len(prompt_lens) != len(response_lens):
        raise ValueError(f"{learner.shape[0]} learner rows, {len(prompt_lens)} prompts, {len(response_lens)} lengths")
    diffs = []
    for engine in engines:
        if len(engine) != len(prompt_lens):
            raise ValueError(f"an engine returned {len(engine)} rows for {len(prompt_lens)}")
        for i, (row, p, r) in enumerate(zip(engine, prompt_lens, response_lens, strict=True)):
            diffs.append(np.abs(np.asarray(row[p : p + r], np.float64) - learner[i, :r]))
    flat = np.concatenate(diffs) if diffs else np.zeros(0)
    if not flat.size:
        return {LOGPROB_DIFF_MAX: 0.0, LOGPROB_DIFF_MEAN: 0.0}
    return {LOGPROB_DIFF_MAX: float(flat.max()), LOGPROB_DIFF_MEAN: float(flat.mean())}
