"""Reference model: the frozen model of the KL term as an actor of its own, scoring each batch once it is sampled.

``ReferenceModel`` is the plain class; ``ReferenceWorker`` its Ray actor, named ``reference-0``. With
``learner.reference: actor`` the learner ranks hold only the policy, and the RL stage asks this actor for the
reference logprobs of each sampled batch before it trains on it (OpenRLHF's separate reference model). The
forward is the learner's own (``learner_model.response_logits``, the same micro-batches), so the numbers are
those a learner rank would compute. With asynchronous rollouts it scores batch N+1 right after it is sampled
and scored, while the ranks still train on batch N: the ranks' step loses its reference forward.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from actors.learner_model import micro_batches, response_logprobs
from cluster.payloads import TrainBatch


class ReferenceModel:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        threads: int = 1,
        micro_batch_size: int = 8,
        micro_batch_tokens: int | None = None,
        share_prompts: bool = True,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device(device)
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens
        self.share_prompts = share_prompts
        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        )
        self.model = model.to(self.device).eval().requires_grad_(False)

    def logprobs(self, batch: TrainBatch, temperature: float) -> np.ndarray:
        """(B, R) float32 reference logprobs of every response token of ``batch`` at ``temperature``, 0 on padding."""
        plan = micro_batches(batch, self.micro_batch_size, self.micro_batch_tokens, self.share_prompts)
        chunks = [(rows, batch.select(rows), self.share_prompts) for rows in plan]
        return response_logprobs(self.model, chunks, len(batch), temperature, self.device)

    def ready(self) -> bool:
        return True


ReferenceWorker = ray.remote(ReferenceModel)
