"""Learner ranks for the Ray tests: W real FSDP2 actors on loopback, built from one LearnerConfig."""

import socket

import numpy as np

from actors.learner import PolicyLearner
from cluster.config import LearnerConfig
from cluster.payloads import LearnerSpec, TrainBatch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(model_path, cfg: LearnerConfig, *, optimizer_steps: int = 1, reference: bool = False, head="causal"):
    """``cfg.world_size`` learner actors forming one process group (kill them with ``ray.kill``)."""
    port = free_port()
    specs = [
        LearnerSpec(
            rank=rank,
            world_size=cfg.world_size,
            master_addr="127.0.0.1",
            master_port=port,
            model_path=str(model_path),
            base_path=str(model_path),
            config=cfg,
            optimizer_steps=optimizer_steps,
            reference=reference,
            head=head,
        )
        for rank in range(cfg.world_size)
    ]
    return [PolicyLearner.options(num_cpus=1).remote(spec) for spec in specs]


def random_batch(rows: int = 8, seed: int = 0, group: int = 1) -> TrainBatch:
    """Rows of random prompt (3-5) and response (2-8) tokens of the tiny vocabulary, random advantages;
    ``group`` consecutive rows share their prompt (a GRPO group: the learner runs it once per micro-batch)."""
    rng = np.random.default_rng(seed)
    prompt_lens = np.repeat(rng.integers(3, 6, -(-rows // group)), group)[:rows]
    response_lens = rng.integers(2, 9, rows)
    ids = np.zeros((rows, int((prompt_lens + response_lens).max())), dtype=np.int64)
    for i in range(rows):
        if i % group == 0:
            prompt = rng.integers(2, 25, prompt_lens[i])
        ids[i, : prompt_lens[i]] = prompt
        ids[i, prompt_lens[i] : prompt_lens[i] + response_lens[i]] = rng.integers(2, 25, response_lens[i])
    advantages = rng.standard_normal(rows).astype(np.float32)
    return TrainBatch(input_ids=ids, prompt_lens=prompt_lens, response_lens=response_lens, advantages=advantages)
