"""Policy learner: one FSDP2 rank of the policy, with the frozen reference model sharded alike.

``LearnerRank`` is the plain class; ``PolicyLearner`` its Ray actor, named ``learner-<rank>``.
W ranks form one torch.distributed group (gloo on CPU; on GPUs NCCL, plus gloo for CPU tensors).
Every rank receives the whole ``TrainBatch`` (one object-store reference) and an ``Objective``
(``cluster/algo``: GRPO, SFT) and trains on its slice; the learner computes the response tokens'
logprobs, the objective the loss, scaled so that W ranks take exactly the step one rank would take
on the whole batch. Rank 0 is the send side of the weight broadcast to the rollout engines. How the
group forms and the model loads: ``learner_model.py``; checkpoints: ``learner_checkpoint.py``.

With ``LearnerSpec.head == "reward"`` the rank trains a reward model instead: a sequence-classification
model with one output (its head is new when it starts from a language model), whose per-sequence
rewards go to a pairwise objective (``cluster/algo/pairwise.py``); its checkpoints load with
``AutoModelForSequenceClassification``. With ``reward_score == "likelihood"`` that model is the language
model itself, scored by the mean log-probability of the response (its config records ``reward_score``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import ray
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from actors import learner_checkpoint
from actors.learner_model import (
    all_reduce,
    init_group,
    load_sharded,
    micro_batches,
    response_logits,
    response_logprobs,
)
from actors.reward_model import LIKELIHOOD, last_token_rewards, likelihood_rewards
from cluster.algo import microbatch
from cluster.algo.logprobs import token_logprobs_and_entropy
from cluster.algo.objective import LossInputs, Objective
from cluster.algo.sync import LOGPROB_DIFF_MAX, LOGPROB_DIFF_MEAN, EngineGap
from cluster.config import LearnerConfig
from cluster.payloads import LearnerSpec, TrainBatch


def lr_lambda(cfg: LearnerConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


class LearnerRank:
    def __init__(self, spec: LearnerSpec) -> None:
        self.rank, self.world_size = spec.rank, spec.world_size
        self.cfg = cfg = spec.config
        self.device = torch.device("cuda", 0) if cfg.gpus_per_rank else torch.device("cpu")
        if not dist.is_initialized():
            init_group(self.device, spec.master_addr, spec.master_port, spec.rank, spec.world_size)
        torch.manual_seed(spec.seed + spec.rank)
        # One torch thread per CPU this rank reserved (at least one).
        torch.set_num_threads(max(1, int(cfg.cpus_per_rank)))
        # Tokenizer and config come from the base model: model_path may be a checkpoint that rotation deletes.
        self.base_path = spec.base_path
        self.trust_remote_code = spec.trust_remote_code
        self.head, self.seed, self.reward_score = spec.head, spec.seed, spec.reward_score
        self.language_model = self.head == "causal" or self.reward_score == LIKELIHOOD  # a policy, or a likelihood RM
        self.model = self._load_sharded(spec.model_path, trainable=True)
        self.ref = self._load_sharded(self.base_path, trainable=False) if spec.reference else None
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, spec.optimizer_steps))
        self.weight_sender = None
        self.sync_client = None

    # ------------------------------------------------------------------ model
    def _load_sharded(self, path: str, trainable: bool) -> torch.nn.Module:
        """The model at ``path``, sharded over the ranks without a full copy on any GPU (``learner_model``).
        The trainable policy keeps float32 master weights; the frozen reference is stored in bf16 when the
        policy computes in bf16 (half the memory, the same logits the policy sees)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        bf16 = self.cfg.mixed_precision == "bf16"
        dtype = torch.bfloat16 if bf16 and not trainable else torch.float32
        if not self.language_model:
            config = self._reward_config(path)

            def load_full():
                return self._load_reward_model(path, config, dtype)

            def build_empty():
                return AutoModelForSequenceClassification.from_config(
                    config, dtype=dtype, trust_remote_code=self.trust_remote_code
                )
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=self.trust_remote_code)
            if self.head == "reward":  # recorded in every checkpoint's config.json: the server scores it alike
                if any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
                    raise ValueError(
                        f"{path} is a sequence-classification reward model (rm.score: head): its language-model "
                        "head is gone, so it cannot be scored by likelihood; start from a language model"
                    )
                config.reward_score = LIKELIHOOD

            def load_full():
                return AutoModelForCausalLM.from_pretrained(
                    path, config=config, dtype=dtype, trust_remote_code=self.trust_remote_code
                )

            def build_empty():
                return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=self.trust_remote_code)

        model = load_sharded(
            load_full,
            build_empty,
            rank=self.rank,
            device=self.device,
            world_size=self.world_size,
            bf16_compute=bf16 and trainable,
        )
        if trainable and self.cfg.activation_checkpointing:
            model.gradient_checkpointing_enable()
        model.train(trainable)
        model.requires_grad_(trainable)
        return model

    def _reward_config(self, path: str):
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=self.trust_remote_code)
        if hasattr(config, "reward_score"):  # a likelihood-scored start: this model is scored by its new head
            del config.reward_score
        text = config.get_text_config()
        if getattr(text, "pad_token_id", None) is None:  # transformers refuses batches without one
            tokenizer = AutoTokenizer.from_pretrained(self.base_path, trust_remote_code=self.trust_remote_code)
            text.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return config

    def _load_reward_model(self, path: str, config, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        # A head new to the checkpoint is drawn from the run's seed: the same model whatever the rank layout.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, dtype=dtype, trust_remote_code=self.trust_remote_code
            )
        model.config.architectures = [type(model).__name__]  # what the checkpoint's config.json says it holds
        return model

    def _require_head(self, head: str, what: str) -> None:
        if self.head != head:
            raise ValueError(f"{what} needs a learner with head {head!r}; this one has {self.head!r}")

    @torch.no_grad()
    def compute_logprobs(self, batch: TrainBatch, *, temperature: float, reference: bool = False) -> np.ndarray:
        """Per-response-token logprobs (B, R) of ``softmax(logits / temperature)`` of this rank's model (or
        the reference), 0 on padding."""
        self._require_head("causal", "compute_logprobs")
        model = self.ref if reference else self.model
        if model is None:
            raise ValueError("no reference model: this learner was built without one")
        return response_logprobs(model, self._micro_batches(batch), len(batch), temperature, self.device)

    def _rewards(self, model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
        """(B,) the scalar head's output at each sequence's last token (prompt + response), or the response's
        mean log-probability (``reward_score == "likelihood"``)."""
        ends = batch.prompt_lens + batch.response_lens
        used = min(batch.input_ids.shape[1], max(1, int(ends.max())))
        ids = torch.tensor(batch.input_ids[:, :used], device=self.device)
        if self.reward_score == LIKELIHOOD:
            starts = torch.tensor(batch.prompt_lens, device=self.device)
            return likelihood_rewards(model, ids, starts, torch.tensor(ends, device=self.device))
        return last_token_rewards(model, ids, torch.tensor(ends, device=self.device))

    @torch.no_grad()
    def compute_rewards(self, batch: TrainBatch) -> np.ndarray:
        """(B,) float32 rewards of a reward-model learner (held-out evaluation); every rank must join (FSDP)."""
        self._require_head("reward", "compute_rewards")
        out = np.zeros(len(batch), dtype=np.float32)
        for rows, chunk, _ in self._micro_batches(batch):
            out[rows] = self._rewards(self.model, chunk).float().cpu().numpy()
        return out

    def _micro_batches(self, batch: TrainBatch, group_rows: int = 1) -> list[tuple[np.ndarray, TrainBatch, bool]]:
        """(rows, micro-batch, share its prompts): ``micro_batch_size`` rows in batch order, or with
        ``micro_batch_tokens`` rows bucketed by length (whole groups of ``group_rows``)."""
        cfg = self.cfg
        plan = micro_batches(batch, cfg.micro_batch_size, cfg.micro_batch_tokens, cfg.share_prompts, group_rows)
        if isinstance(self.model, FSDPModule) and self.world_size > 1:
            # The ranks make the same forward calls (each all-gathers the weights): as many micro-batches as the rank
            # with the most, and a micro-batch's prompts run apart on every rank if on any.
            count = torch.tensor(float(len(plan)))
            all_reduce(count, op=dist.ReduceOp.MAX)
            plan = microbatch.split_to(plan, int(count.item()), group_rows)
        chunks = [batch.select(rows) for rows in plan]
        shares = torch.tensor([cfg.share_prompts and _repeats_a_prompt(c) for c in chunks], dtype=torch.float32)
        if isinstance(self.model, FSDPModule) and self.world_size > 1:
            all_reduce(shares, op=dist.ReduceOp.MAX)
        return list(zip(plan, chunks, [bool(x) for x in shares.tolist()], strict=True))

    def _shard(self, batch: TrainBatch, mini_batches: int) -> TrainBatch:
        """This rank's rows: its slice of every global mini-batch, so mini-batches do not depend on W."""
        mini = len(batch) // mini_batches
        part = mini // self.world_size
        starts = [k * mini + self.rank * part for k in range(mini_batches)]
        return batch.select(np.concatenate([np.arange(a, a + part) for a in starts]))

    # ------------------------------------------------------------------ training
    def train_step(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        """``objective.epochs`` passes of ``objective.mini_batches`` optimizer steps over this rank's shard;
        returns metrics averaged over updates and ranks."""
        self._require_head(objective.head, type(objective).__name__)
        self._check_groups(batch, objective)
        start = time.perf_counter()
        shard = self._shard(batch, objective.mini_batches)
        old = self._old_logprobs(shard, objective)
        ref = self._ref_logprobs(shard, objective)
        totals: dict[str, float] = {}
        mini_size = len(shard) // objective.mini_batches
        # The weight-sync proof rides on the first update's forward: the weights the engines sampled with.
        gap = EngineGap() if shard.check_engine else None
        for epoch in range(objective.epochs):
            for k in range(objective.mini_batches):
                rows = slice(k * mini_size, (k + 1) * mini_size)
                check = gap if epoch == 0 and k == 0 else None
                for key, value in self._optimizer_step(shard, rows, old, ref, objective, check).items():
                    merged = max(totals.get(key, value), value) if _is_max(key) else totals.get(key, 0.0) + value
                    totals[key] = merged
        metrics = {key: value if _is_max(key) else value / objective.updates for key, value in totals.items()}
        if gap is not None:
            metrics |= _reduce_gap(gap)
        tokens = float(shard.response_lens.sum()) * objective.epochs
        metrics["throughput/train_tokens_per_s"] = tokens * self.world_size / (time.perf_counter() - start)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _check_groups(self, batch: TrainBatch, objective: Objective) -> None:
        """Rank shards and mini-batches hold whole groups (pairs) only if the groups split evenly over them."""
        rows, splits = objective.group_rows, objective.mini_batches * self.world_size
        if rows > 1 and len(batch) % (rows * splits):
            raise ValueError(
                f"{type(objective).__name__}: {len(batch)} rows in groups of {rows}; the {len(batch) // rows} "
                f"groups must split evenly over {objective.mini_batches} mini-batch(es) x {self.world_size} rank(s)"
            )

    def _old_logprobs(self, shard: TrainBatch, objective: Objective) -> torch.Tensor | None:
        """The behaviour policy's logprobs for the clipped ratio, from where the batch says: the engine's
        (the distribution the samples really came from, at no cost) or a forward of this model before the
        step's first update. None when one update makes the training forward its own old policy."""
        if not objective.uses_old_logprobs:
            return None
        if shard.behaviour == "rollout":
            return _pad_to(torch.tensor(shard.rollout_logprobs), shard.max_response_len)
        if objective.updates == 1:
            return None
        return torch.as_tensor(self.compute_logprobs(shard, temperature=objective.temperature))

    def _ref_logprobs(self, shard: TrainBatch, objective: Objective) -> torch.Tensor | None:
        """The KL term's reference logprobs: the batch's own (the reference actor computed them as it was sampled)
        or a forward of this rank's reference model."""
        if not objective.uses_reference:
            return None
        if shard.ref_logprobs is not None:
            return _pad_to(torch.as_tensor(shard.ref_logprobs), max(1, shard.max_response_len))
        if self.ref is None:
            raise ValueError(
                f"{type(objective).__name__} needs reference logprobs: this learner has no reference model and the "
                "batch brings none (learner.reference: actor computes them before the batch reaches the learner)"
            )
        return torch.as_tensor(self.compute_logprobs(shard, temperature=objective.temperature, reference=True))

    def _optimizer_step(
        self,
        shard: TrainBatch,
        rows: slice,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        objective: Objective,
        gap: EngineGap | None = None,
    ) -> dict[str, float]:
        sums, weights, maxes = self._backward(shard.select(rows), rows, old, ref, objective, gap)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # Already global, the same on every rank: a weight of 1 per rank makes its mean itself.
        sums["grad_norm"], weights["grad_norm"] = float(grad_norm), 1.0
        return _reduce(sums, weights, maxes)

    def _backward(
        self,
        mini: TrainBatch,
        rows: slice,
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        objective: Objective,
        gap: EngineGap | None = None,
    ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """Forward and backward of one mini-batch, micro-batch by micro-batch, each scaled so that the summed
        gradient over micro-batches and ranks is the gradient of the objective's loss on the whole global
        mini-batch. Returns the metrics' weighted sums, their weights and the maxima. ``gap``, if given,
        takes each micro-batch's logprobs against the engine's."""
        token_total = torch.tensor(float(mini.response_lens.sum()))
        all_reduce(token_total)
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        maxes: dict[str, float] = {}
        # Whole groups per micro-batch: a pair's loss needs both of its rows.
        micros = self._micro_batches(mini, objective.group_rows)
        for j, (index, micro, share) in enumerate(micros):
            # One reduce-scatter per mini-batch (at its last micro-batch) unless every micro-batch must reduce.
            if hasattr(self.model, "set_requires_gradient_sync"):  # an FSDP2 module (not bare at world size 1)
                self.model.set_requires_gradient_sync(self.cfg.grad_sync == "every" or j == len(micros) - 1)
            inputs, own = self._loss_inputs(micro, (rows, torch.as_tensor(index)), old, ref, objective, share)
            if gap is not None:
                gap.add(inputs.logprobs, micro.rollout_logprobs, inputs.mask)
            loss, m = objective.loss(inputs)
            (loss * self._loss_scale(micro, mini, token_total, objective)).backward()
            tokens = float(micro.response_lens.sum())
            w = tokens if objective.token_weighted else float(len(micro))
            for key, value in (m | own).items():
                if _is_max(key):
                    maxes[key] = max(maxes.get(key, value), value)
                    continue
                # Per-token figures (KL, clip fraction, entropy) are means over every token, whatever the loss.
                kw = tokens if key in objective.token_metrics or key in LEARNER_TOKEN_METRICS else w
                sums[key] = sums.get(key, 0.0) + value * kw
                weights[key] = weights.get(key, 0.0) + kw
        return sums, weights, maxes

    def gradients(self, batch: TrainBatch, objective: Objective) -> dict[str, np.ndarray]:
        """The gradient of ``objective``'s loss on the whole ``batch`` as this learner computes it for one
        update (its micro-batches, its ranks, before clipping), as full tensors; nothing is applied. For checks
        against an independent computation; every rank must join."""
        shard = self._shard(batch, 1)
        old = self._old_logprobs(shard, objective)
        ref = self._ref_logprobs(shard, objective)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(shard, slice(0, len(shard)), old, ref, objective)
        grads = {}
        for name, param in self.model.named_parameters():
            grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
            grads[name] = grad.detach().float().cpu().numpy()
        self.optimizer.zero_grad(set_to_none=True)
        return grads

    def _loss_inputs(
        self,
        micro: TrainBatch,
        cut: tuple[slice, torch.Tensor],
        old: torch.Tensor | None,
        ref: torch.Tensor | None,
        objective: Objective,
        share: bool,
    ) -> tuple[LossInputs, dict[str, float]]:
        """One micro-batch's forward (with gradient) as the objective's inputs, and the learner's own metrics.
        ``cut``: the mini-batch's rows of the precomputed tables, and this micro-batch's rows of those; ``share``:
        run its distinct prompts once."""
        if objective.head == "reward":
            return LossInputs(values=self._rewards(self.model, micro)), {}
        logits, tokens, mask = response_logits(self.model, micro, self.device, share)
        lp, entropy = token_logprobs_and_entropy(logits, tokens, objective.temperature)
        cut = (*cut, slice(0, lp.shape[1]))
        inputs = LossInputs(
            logprobs=lp,
            mask=mask,
            advantages=torch.as_tensor(micro.advantages, device=self.device),
            old_logprobs=self._cut(old, cut),
            ref_logprobs=self._cut(ref, cut),
        )
        # Mean entropy of the sampling distribution (logits / T) over response tokens.
        return inputs, {"entropy": float((entropy * mask).sum() / mask.sum().clamp(min=1))}

    def _cut(self, table: torch.Tensor | None, cut: tuple[slice, torch.Tensor, slice]) -> torch.Tensor | None:
        rows, micro, width = cut
        return None if table is None else table[rows][micro, width].to(self.device)

    def _loss_scale(
        self, micro: TrainBatch, mini: TrainBatch, token_total: torch.Tensor, objective: Objective
    ) -> float:
        # FSDP averages gradients over ranks, so each micro-batch's share of the global mean is
        # multiplied by the world size; token-weighted objectives weigh by tokens, the others by sequences.
        if objective.token_weighted:
            return float(micro.response_lens.sum()) / max(1.0, token_total.item()) * self.world_size
        return len(micro) / len(mini)

    # ------------------------------------------------------------------ weight broadcast
    def init_weight_sync(
        self,
        kind: str,
        rollout_workers: list,
        master_addr: str,
        master_port: int,
        ranks_per_engine: int = 1,
        dtype: str = "float32",
    ) -> None:
        """Join the weight-transfer group of ``rollout_workers`` (rank 0 sends); weights travel in ``dtype``,
        the engines' serving dtype."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from cluster.transfer.fanout import RolloutFanoutClient, trainer_init_info, transfer_world_size
        from cluster.transfer.gloo import register_vllm_plugin
        from cluster.transfer.source import CastSource

        register_vllm_plugin()
        self.sync_client = RolloutFanoutClient(rollout_workers, ranks_per_engine)
        world = transfer_world_size(len(rollout_workers), ranks_per_engine)
        info = trainer_init_info(kind, master_addr, master_port, world, self.rank)
        self.weight_sender = WeightTransferTrainerFactory.trainer_init(
            info, client=self.sync_client, source=CastSource(self.model, getattr(torch, dtype))
        )

    def sync_weights(self, version: int) -> dict[str, float]:
        if self.weight_sender is None:
            raise RuntimeError("init_weight_sync was not called")
        start = time.perf_counter()
        self.sync_client.next_version = version
        self.weight_sender.send_weights()
        return {
            "time/weight_sync_s": time.perf_counter() - start,
            "time/weight_receive_s": self.sync_client.last_receive_s,
        }

    def peak_memory_gb(self) -> float:
        """Peak GPU memory this rank allocated so far, GiB (0 on CPU)."""
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else 0.0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str) -> None:
        """The Hugging Face export plus sharded trainer state (``learner_checkpoint``); every rank joins."""
        learner_checkpoint.save(self, path)

    def load_checkpoint(self, path: str) -> None:
        learner_checkpoint.load(self, path)


def _repeats_a_prompt(batch: TrainBatch) -> bool:
    return microbatch.prompt_owners(batch.input_ids, batch.prompt_lens) is not None


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, max(0, width - x.shape[1])))[:, :width]


def _is_max(key: str) -> bool:
    """Metrics named ``*_max`` are maxima over micro-batches, updates and ranks, not means."""
    return key.endswith("_max")


def _reduce_gap(gap: EngineGap) -> dict[str, float]:
    """The engine-vs-learner gap over every rank's checked tokens."""
    totals = torch.tensor([gap.total, gap.tokens], dtype=torch.float64)
    all_reduce(totals)
    peak = torch.tensor([gap.peak], dtype=torch.float64)
    all_reduce(peak, op=dist.ReduceOp.MAX)
    return {
        LOGPROB_DIFF_MAX: peak.item(),
        LOGPROB_DIFF_MEAN: totals[0].item() / max(totals[1].item(), 1.0),
        "rollout/logprob_checked_tokens": totals[1].item(),
    }


def _reduce(sums: dict[str, float], weights: dict[str, float], maxes: dict[str, float]) -> dict[str, float]:
    """Weighted means over every rank's micro-batches (one all-reduce) and maxima (another)."""
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [weights[k] for k in keys], dtype=torch.float64)
    all_reduce(totals)
    n = len(keys)
    out = {k: (totals[i] / max(totals[n + i].item(), 1e-12)).item() for i, k in enumerate(keys)}
    top = sorted(maxes)
    peaks = torch.tensor([maxes[k] for k in top], dtype=torch.float64)
    all_reduce(peaks, op=dist.ReduceOp.MAX)
    return out | {k: peaks[i].item() for i, k in enumerate(top)}


LEARNER_TOKEN_METRICS = frozenset({"entropy"})
"""The learner's own per-token metrics."""


PolicyLearner = ray.remote(LearnerRank)
