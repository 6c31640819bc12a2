"""Reward-model server: scores (prompt, response) pairs with a trained reward-model checkpoint.

``RewardModel`` is the plain class; ``RewardModelServer`` its Ray actor (the caller sets its CPUs or
GPU with ``.options``). It loads what ``r1ray rm`` writes, plus its tokenizer, and returns one float32
reward per pair, the response tokenized apart from the prompt with EOS appended, exactly as the reward
model was trained (``cluster/data/pairs.py``):

- a Hugging Face ``AutoModelForSequenceClassification`` folder with one label: the scalar head at the
  response's last token (``last_token_rewards``);
- a language model whose config says ``reward_score: likelihood`` (``rm.score``): the mean log-probability
  of the response's tokens after the prompt (``likelihood_rewards``).

These two functions are the one place each score is read; the learner trains through them too.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from cluster.data.pairs import pair_tokens


def last_token_rewards(model: torch.nn.Module, input_ids: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """(B,) the scalar head's output at position ``ends - 1`` of each right-padded row of ``input_ids``.

    Read from the head's own (B, L, 1) output through a forward hook, so the model runs as a whole (as FSDP
    needs): transformers pools at the rightmost token that is not the pad id, one token too early when a
    sequence ends with that id (tokenizers whose pad token is EOS)."""
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Module):
        raise ValueError(f"{type(model).__name__} has no 'score' head: not a sequence-classification model")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    attention = (positions[None] < ends[:, None]).long()
    outputs: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _args, out: outputs.append(out))
    try:
        model(input_ids=input_ids, attention_mask=attention)
    finally:
        handle.remove()
    scores = outputs[0][..., 0].float()
    return scores[torch.arange(len(ends), device=scores.device), ends - 1]


LIKELIHOOD = "likelihood"
"""The ``reward_score`` a likelihood-scored reward model's ``config.json`` carries."""


def likelihood_rewards(
    model: torch.nn.Module, input_ids: torch.Tensor, prompt_lens: torch.Tensor, ends: torch.Tensor
) -> torch.Tensor:
    """(B,) each right-padded row's mean log-probability (temperature 1) of its response tokens, positions
    ``prompt_lens`` to ``ends - 1``, under the causal language model ``model``. Logits only from the earliest
    position that predicts a response token on (``logits_to_keep``), log-probabilities in bounded chunks."""
    from cluster.algo.logprobs import token_logprobs

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    attention = (positions[None] < ends[:, None]).long()
    first = max(0, int(prompt_lens.min()) - 1)
    keep = input_ids.shape[1] - 1 - first
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep + 1).logits[:, :keep]
    logprobs = token_logprobs(logits, input_ids[:, first + 1 :])
    predicted = positions[None, first + 1 :]
    mask = ((predicted >= prompt_lens[:, None]) & (predicted < ends[:, None])).float()
    return (logprobs * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def reward_score_of(config) -> str:
    """``head`` or ``likelihood``: how the checkpoint with this Hugging Face config scores a response."""
    return LIKELIHOOD if getattr(config, "reward_score", None) == LIKELIHOOD else "head"


class RewardModel:
    def __init__(
        self,
        path: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.scoring = reward_score_of(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code))
        kwargs = {"dtype": getattr(torch, dtype), "trust_remote_code": trust_remote_code}
        if self.scoring == LIKELIHOOD:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
            if model.config.num_labels != 1:
                raise ValueError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
        self.model = model.to(self.device).eval()

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One float32 reward per (prompt, response); ``prompts`` are already templated text."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        step = self.batch_size
        parts = [self._score(prompts[i : i + step], responses[i : i + step]) for i in range(0, len(prompts), step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def _score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        seqs, starts = [], []
        for prompt, response in zip(prompts, responses, strict=True):
            prompt_ids, response_ids = pair_tokens(self.tokenizer, prompt, response)
            seqs.append(prompt_ids + response_ids)
            starts.append(len(prompt_ids))
        ids = torch.zeros((len(seqs), max(len(s) for s in seqs)), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
        ends = torch.tensor([len(s) for s in seqs], device=self.device)
        ids = ids.to(self.device)
        if self.scoring == LIKELIHOOD:
            rewards = likelihood_rewards(self.model, ids, torch.tensor(starts, device=self.device), ends)
        else:
            rewards = last_token_rewards(self.model, ids, ends)
        return rewards.cpu().numpy().astype(np.float32)


RewardModelServer = ray.remote(RewardModel)
