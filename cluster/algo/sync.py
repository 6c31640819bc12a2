"""The check that proves weight sync: the engine's and the learner's logprobs of the same tokens agree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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


class EngineGap:
    """The same gap from a training batch the engines sampled with the learner's current weights: the
    engine's logprob of each sampled token (``rollout_logprobs``) against the learner's forward of the same
    tokens at the same temperature, before any update. Running maximum, sum and count over response tokens."""

    def __init__(self) -> None:
        self.peak, self.total, self.tokens = 0.0, 0.0, 0.0

    def add(self, learner: torch.Tensor, engine: np.ndarray, mask: torch.Tensor) -> None:
        """``learner`` (B, R) logprobs, ``engine`` (B, >= R) the engine's, ``mask`` (B, R) the response tokens."""
        if engine.shape[0] != learner.shape[0] or engine.shape[1] < learner.shape[1]:
            raise ValueError(f"engine logprobs {engine.shape} do not cover learner logprobs {tuple(learner.shape)}")
        width = learner.shape[1]
        diff = (learner.detach().double() - torch.as_tensor(engine[:, :width], device=learner.device).double()).abs()
        diff = diff * mask
        self.peak = max(self.peak, float(diff.max()) if diff.numel() else 0.0)
        self.total += float(diff.sum())
        self.tokens += float(mask.sum())
