"""Weight sync between the learner ranks and the rollout engines: connect once, push every step, prove it.

``push`` broadcasts the learner's weights to every engine (learner rank 0 sends through vLLM's
weight-transfer API: ``nccl`` between GPUs, ``ipc`` to engines on the learners' own GPUs, r1ray's
``gloo`` engine on CPU, see ``cluster/transfer``), in the engines' serving dtype. With colocated
engines it also wakes them: weights first (the push needs their buffers), then the KV cache.
``check`` is the one sync check: after each push, every engine and the learner score the same
probe sequences and ``algo.sync.logprob_gap`` compares them; a stale or partly updated engine
shows up at once in ``rollout/logprob_diff_max``.
"""

from __future__ import annotations

import time

import ray

from cluster.algo.sync import logprob_gap
from cluster.config import RunConfig
from cluster.payloads import TrainBatch

SYNC_PROBE_ROWS = 8


def weight_sync_backend(cfg: RunConfig) -> str:
    if cfg.cluster.weight_sync != "auto":
        return cfg.cluster.weight_sync
    if not (cfg.learner.gpus_per_rank and cfg.rollout.gpus_per_worker):
        return "gloo"
    return "ipc" if cfg.cluster.placement == "colocated" else "nccl"


class WeightSync:
    def __init__(
        self,
        learners: list,
        rollouts: list,
        backend: str,
        ranks_per_engine: int = 1,
        *,
        dtype: str = "float32",
        colocated: bool = False,
    ) -> None:
        self.learners, self.rollouts = learners, rollouts
        self.backend, self.ranks_per_engine = backend, ranks_per_engine
        self.dtype, self.colocated = dtype, colocated

    def connect(self, address: str, port: int) -> None:
        """Form the transfer group (learner rank 0 plus every engine's ranks) once."""
        calls = [
            learner.init_weight_sync.remote(
                self.backend, self.rollouts, address, port, self.ranks_per_engine, dtype=self.dtype
            )
            for learner in self.learners
        ]
        ray.get(calls)

    def sleep_engines(self) -> None:
        """Colocated: free the engines' GPU memory for training (a no-op where sleep mode is off: CPU)."""
        if self.colocated:
            ray.get([worker.sleep.remote() for worker in self.rollouts])

    def wake_engines(self, tags: list[str] | None = None) -> None:
        if self.colocated:
            ray.get([worker.wake_up.remote(tags) for worker in self.rollouts])

    def push(self, version: int) -> dict[str, float]:
        """Broadcast the learner's weights to every engine, which then reports policy ``version``."""
        self.wake_engines(["weights"])
        pushed = ray.get([learner.sync_weights.remote(version) for learner in self.learners])[0]
        self.wake_engines(["kv_cache"])
        return pushed

    def check(self, batch: TrainBatch) -> dict[str, float]:
        """The learner's and every engine's logprobs of the first rows of ``batch``, compared."""
        return self.start_check(batch).result()

    def start_check(self, batch: TrainBatch) -> PendingCheck:
        """``check``, sent now and collected by ``PendingCheck.result``: each actor runs its part when it reaches
        the call, after the calls sent to it before (a learner's probe before a ``train_step`` sent after it sees
        the weights before the update; an engine's, queued behind a ``generate``, still the pushed ones)."""
        start = time.perf_counter()
        probe = batch.select(slice(0, SYNC_PROBE_ROWS))
        # vLLM applies no sampling processors to prompt logprobs: compare at temperature 1.
        learners = [rank.compute_logprobs.remote(probe, temperature=1.0) for rank in self.learners]
        sequences = probe.sequences()
        engines = [worker.prompt_logprobs.remote(sequences) for worker in self.rollouts]
        return PendingCheck(probe, learners, engines, time.perf_counter() - start)


class PendingCheck:
    """A sync check on its way: ``result`` waits for its parts (every FSDP rank joins the forward's parameter
    gathers) and compares them; ``time/sync_check_s`` is what the caller spent sending and waiting."""

    def __init__(self, probe: TrainBatch, learners: list, engines: list, sent_s: float) -> None:
        self.probe, self.learners, self.engines, self.sent_s = probe, learners, engines, sent_s

    def result(self) -> dict[str, float]:
        start = time.perf_counter()
        engines = ray.get(self.engines)
        learner_lp = ray.get(self.learners)[0]
        gap = logprob_gap(learner_lp, engines, self.probe.prompt_lens, self.probe.response_lens)
        return gap | {"time/sync_check_s": self.sent_s + time.perf_counter() - start}
