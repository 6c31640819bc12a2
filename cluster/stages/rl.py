"""The RL stage: DeepSeek-R1-Zero's GRPO loop over Ray actors.

Each step: take prompts, sample G completions per prompt on the rollout workers, score them with
rule-based rewards, turn rewards into group-relative advantages, update the policy on the
learner ranks, broadcast the new weights to every rollout engine (and prove it), log. Run it with
``r1ray train`` (the embedded demo) or ``r1ray train --config deploy/configs/<x>.yaml``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import numpy as np
import torch

from cluster.algo.grpo import GRPOObjective, dynamic_sampling_mask, group_advantages
from cluster.algo.sync import LOGPROB_DIFF_MAX, LOGPROB_DIFF_MEAN
from cluster.config import RunConfig
from cluster.data.prompts import Prompts, reward_info
from cluster.errors import LearnerLost, RunAborted, Stopped
from cluster.payloads import Behaviour, Rollouts, SampledBatch, Scores, TrainBatch
from cluster.runtime.metrics import MetricsLogger
from cluster.stages import checkpoint
from cluster.stages.common import every, open_run, sampling_spec, save_checkpoint, write_summary
from cluster.stages.evaluate import EvalResult, evaluate, mean_or_none, thinks
from cluster.stages.report import plot_run, print_table, progress_line
from cluster.stages.stopping import STOP


def train(cfg: RunConfig, resume: bool = False) -> dict:
    from cluster.runtime.fleet import Fleet
    from cluster.runtime.ray_cluster import start_ray

    start = open_run(cfg, resume)
    prompts = Prompts(cfg, start.tokenizer)
    start_ray(cfg)
    STOP.install(cfg.cluster.stop_grace_s)
    restarts = {"rollout": 0, "scorer": 0, "learner": 0, "reference": 0}
    objective = grpo_objective(cfg)
    steps = cfg.grpo.steps * objective.updates
    model = str(start.last_checkpoint or start.base_model)
    fleet = Fleet(
        cfg, model, start.base_model, optimizer_steps=steps, reference=objective.uses_reference, restarts=restarts
    )
    restart_from = None
    try:
        while True:
            prompts.train.position = start.state["data_position"]
            try:
                if restart_from is not None:
                    fleet.restart_learners(restart_from)
                summary = _train(cfg, start, prompts, fleet)
                break
            except LearnerLost as lost:
                # An FSDP group cannot lose a rank: the learner ranks are re-created from the last complete
                # checkpoint, and the run goes on from there exactly as it would have (the engines, which stay,
                # are re-seeded per step and take the checkpoint's weights before the first one).
                restarts["learner"] += 1
                last = checkpoint.latest(cfg.run_dir)
                if sum(restarts.values()) > cfg.cluster.max_restarts:
                    raise RunAborted(f"{lost}; cluster.max_restarts ({cfg.cluster.max_restarts}) reached") from lost
                state = checkpoint.load_driver_state(last) if last else {"step": 0, "data_position": 0, "evals": []}
                where = f"the checkpoint of step {state['step']}" if last else "the start"
                count = f"{sum(restarts.values())}/{cfg.cluster.max_restarts}"
                print(f"fault: {lost}; restarting the learner ranks from {where} ({count})", flush=True)
                restart_from = str(last or start.base_model)
                start = replace(start, last_checkpoint=last, state=state)
    finally:
        fleet.shutdown()
    print_table(cfg.run_dir, summary)
    return summary


def _train(cfg: RunConfig, start, prompts: Prompts, fleet) -> dict:
    last, done = start.last_checkpoint, start.state["step"]
    if last:
        fleet.load_checkpoint(str(last))
        print(f"resumed from {last} at step {done}", flush=True)
    # Engines and learner start from the same weights (the base or the checkpoint): prove it on held-out prompts.
    gap = fleet.sync_weights(done, probe=prompts.probe_batch())
    print(f"weights in sync: engine vs learner logprob gap {gap['rollout/logprob_diff_max']:.1e}", flush=True)
    log = MetricsLogger.of_run(cfg, resume_step=done)
    try:
        evals = [EvalResult.from_dict(e) for e in start.state["evals"]]
        if not evals:
            evals.append(evaluate(fleet, prompts, cfg, step=0))
            print(f"eval before GRPO: {evals[-1].text()}", flush=True)
        began = time.perf_counter()
        position = rl_loop(fleet, prompts, cfg, log, evals, first_step=done + 1)
        if evals[-1].step != cfg.grpo.steps and not STOP.requested:  # stopping: checkpoint first, no eval
            try:
                evals.append(evaluate(fleet, prompts, cfg, step=cfg.grpo.steps))
            except RunAborted:  # the last update is kept: a resume only evaluates it
                save_checkpoint(fleet, cfg, cfg.grpo.steps, position, evals)
                raise
        save_checkpoint(fleet, cfg, cfg.grpo.steps, position, evals)
    finally:
        log.close()  # also when a learner restart opens the run's log again
    plots = plot_run(cfg.run_dir, evals)
    return write_summary(cfg, evals, cfg.grpo.steps, time.perf_counter() - began, plots, prompts.skipped)


def rl_loop(fleet, prompts: Prompts, cfg: RunConfig, log: MetricsLogger, evals: list, first_step: int) -> int:
    """GRPO steps ``first_step..grpo.steps``; returns the prompt stream's position after the last batch."""
    position = prompts.train.position
    objective = grpo_objective(cfg)
    schedule = RolloutSchedule(lambda: collect(fleet, prompts, cfg), ahead=cfg.grpo.async_rollouts)
    trained = saved = first_step - 1  # the last step the learner holds, and the last one checkpointed here
    free_check = free_sync_check(cfg)
    try:
        for step in range(first_step, cfg.grpo.steps + 1):
            started = time.perf_counter()
            more = step < cfg.grpo.steps
            sampled = schedule.batch(prefetch=more)
            batch = train_batch(sampled, cfg, check_engine=free_check)
            # Without the free check, the push before this step is proven while the step runs: the learner scores
            # the probe before this batch's update, the engines beside their sampling, before the next push.
            proof = None if free_check else fleet.start_sync_check(batch)
            train_started = time.perf_counter()
            train_metrics = fleet.train(batch, objective)
            trained, position = step, sampled.data_position
            train_s = time.perf_counter() - train_started
            schedule.settle()  # the engines finish sampling before they take new weights
            proven = fleet.sync_check_result(proof) if proof else {}
            probe = not more or (free_check and every(cfg.cluster.sync_check_every, step))
            sync = worse_gap(proven, fleet.sync_weights(step, probe=batch, check=probe))
            row = step_metrics(step, cfg, sampled, train=train_metrics, sync=sync, train_s=train_s, started=started)
            row |= fleet.fault_metrics()
            log.log(row)
            print(progress_line(row, cfg.grpo.steps), flush=True)
            report_reward_failures(sampled.scores)
            if more and STOP.requested:  # before any evaluation: the grace period is for the checkpoint
                save_checkpoint(fleet, cfg, step, position, evals)
                STOP.done()
                raise Stopped(f"stopped after step {step} of {cfg.grpo.steps} (SIGTERM)", str(cfg.run_dir))
            if more and every(cfg.eval_every, step):
                evals.append(evaluate(fleet, prompts, cfg, step=step))
                print(f"eval at step {step}: {evals[-1].text()}", flush=True)
            if more and every(cfg.checkpoint_every, step):
                save_checkpoint(fleet, cfg, step, position, evals)
                saved = step
    except RunAborted:
        # Too many dead engines or scorers: the learners still hold their last update; keep it.
        if trained > saved and trained > 0:
            save_checkpoint(fleet, cfg, trained, position, evals)
        raise
    finally:
        schedule.close()
    return position


class RolloutSchedule:
    """Where each step's batch comes from. Synchronous: sampled when the step asks for it, with the
    newest weights. One step off-policy (``ahead``): the next batch is sampled with the current
    weights while the learner trains on this one; ``settle`` waits for it before the weights change."""

    def __init__(self, sample: Callable[[], SampledBatch], *, ahead: bool) -> None:
        self.sample, self.ahead = sample, ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts") if ahead else None
        self.pending: Future | None = None

    def batch(self, *, prefetch: bool) -> SampledBatch:
        """This step's batch; ahead of time, start sampling the next one if ``prefetch``."""
        batch = self.pending.result() if self.pending else self.sample()
        self.pending = self.pool.submit(self.sample) if self.pool and prefetch else None
        return batch

    def settle(self) -> None:
        if self.pending:
            wait([self.pending])

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)


def grpo_objective(cfg: RunConfig) -> GRPOObjective:
    g = cfg.grpo
    return GRPOObjective(
        epochs=g.epochs,
        mini_batches=g.mini_batches,
        temperature=cfg.rollout.temperature,
        clip_low=g.clip_low,
        clip_high=g.clip_high,
        kl_coef=g.kl_coef,
        loss_agg=g.loss_agg,
        max_tokens=cfg.model.max_response_len,
        clip_ratio_c=g.clip_ratio_c,
        kl_max=g.kl_max,
    )


def free_sync_check(cfg: RunConfig) -> bool:
    """Whether each training batch proves the push before it (``TrainBatch.check_engine``): synchronous rows were
    sampled with the learner's weights, so its first forward must match the engine's logprobs. Not with
    ``top_p`` < 1, where vLLM's logprobs are renormalised over the nucleus and the learner's are not; there, and
    with asynchronous rollouts, every push is proven by a probe during the step after it (``Fleet.start_sync_check``),
    and the last one at once."""
    return not cfg.grpo.async_rollouts and cfg.rollout.top_p == 1.0


def worse_gap(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Two sync checks' metrics (or any metrics carrying them) as one: the larger engine-vs-learner gaps, the
    seconds of both."""
    out = a | b
    for key in (LOGPROB_DIFF_MAX, LOGPROB_DIFF_MEAN):
        if key in a and key in b:
            out[key] = max(a[key], b[key])
    if "time/sync_check_s" in a and "time/sync_check_s" in b:
        out["time/sync_check_s"] = a["time/sync_check_s"] + b["time/sync_check_s"]
    return out


def behaviour_policy(cfg: RunConfig) -> Behaviour:
    """Stale (one-step-off) rollouts need the engine's logprobs; so does ``grpo.old_logprobs: rollout``
    when a batch takes several updates. One on-policy update needs none: the training forward is its own."""
    several = cfg.grpo.epochs * cfg.grpo.mini_batches > 1
    return "rollout" if cfg.grpo.async_rollouts or (several and cfg.grpo.old_logprobs == "rollout") else "learner"


def train_batch(sampled: SampledBatch, cfg: RunConfig, *, check_engine: bool) -> TrainBatch:
    """The learner's batch of a sampled one: group-relative advantages, where the behaviour policy's logprobs
    come from, and the reference logprobs when the reference actor computed them as the batch was sampled."""
    scores = torch.as_tensor(sampled.scores.total)
    advantages = group_advantages(scores, cfg.grpo.group_size, scale=cfg.grpo.scale_advantages).numpy()
    return TrainBatch.from_rollouts(
        sampled.rollouts,
        advantages,
        behaviour_policy(cfg),
        check_engine=check_engine,
        ref_logprobs=sampled.ref_logprobs,
    )


def collect(fleet, prompts: Prompts, cfg: RunConfig) -> SampledBatch:
    """Sample and score one batch of groups; with DAPO dynamic sampling, keep groups whose rewards differ."""
    g, want = cfg.grpo.group_size, cfg.grpo.prompts_per_step
    spec = sampling_spec(cfg, "train")
    rounds: list[SampledGroups] = []
    kept: list[SampledGroups] = []  # one group each
    dropped: list[SampledGroups] = []
    for _ in range(cfg.grpo.max_sampling_rounds if cfg.grpo.dynamic_sampling else 1):
        first = prompts.train.position
        examples = prompts.train.take(want - len(kept))
        # Samples keyed by the stream position: a resumed run draws what an uninterrupted one drew.
        rollouts = fleet.generate(prompts.encode(examples), g, spec, seed=f"train/{first}")
        answers = [ex.answer for ex in examples for _ in range(g)]
        scores = fleet.score(rollouts.texts, answers, reward_info(examples, cfg.data, g, prompts.format))
        rounds.append(SampledGroups(rollouts=rollouts, scores=scores, prompts=len(examples)))
        informative = dynamic_sampling_mask(torch.as_tensor(scores.total), g).numpy()
        for i in range(len(examples)):
            keep = informative[i] or not cfg.grpo.dynamic_sampling
            (kept if keep else dropped).append(rounds[-1].group(i))
        if len(kept) >= want:
            break
    chosen = (kept + dropped)[:want]  # refill with uninformative groups (zero advantage) if rounds ran out
    rows = Scores.concat([c.scores for c in chosen])
    calls = Scores.concat([r.scores for r in rounds], sequential=True)  # every round's timeouts, errors, seconds
    rollouts = replace(
        Rollouts.concat([c.rollouts for c in chosen]), gen_seconds=sum(r.rollouts.gen_seconds for r in rounds)
    )
    # With a reference actor, the KL term's reference logprobs are computed here, once the batch is sampled (with
    # asynchronous rollouts, while the learner trains on the batch before it).
    started = time.perf_counter()
    ref_logprobs = fleet.reference_logprobs(rollouts, cfg.rollout.temperature)
    return SampledBatch(
        rollouts=rollouts,
        scores=replace(calls, total=rows.total, components=rows.components),
        prompts_sampled=sum(r.prompts for r in rounds),
        data_position=prompts.train.position,
        ref_logprobs=ref_logprobs,
        reference_seconds=time.perf_counter() - started if ref_logprobs is not None else 0.0,
    )


@dataclass(kw_only=True)
class SampledGroups:
    """One generate-and-score round (or one group of it)."""

    rollouts: Rollouts
    scores: Scores
    prompts: int

    def group(self, i: int) -> SampledGroups:
        g = self.rollouts.group_size
        return SampledGroups(
            rollouts=self.rollouts.select_groups([i]), scores=self.scores.select(slice(i * g, (i + 1) * g)), prompts=1
        )


def step_metrics(
    step: int, cfg: RunConfig, sampled: SampledBatch, *, train: dict, sync: dict, train_s: float, started: float
) -> dict:
    rollouts, scores = sampled.rollouts, sampled.scores
    lengths = rollouts.lengths.astype(np.float64)
    correct = scores.components[cfg.reward.accuracy_key] > 0.5
    by_outcome = {"correct_mean": mean_or_none(lengths[correct]), "incorrect_mean": mean_or_none(lengths[~correct])}
    row = {
        "step": step,
        "policy_version": step,
        "rollout/policy_version": rollouts.policy_version,
        "rollout/staleness": step - 1 - rollouts.policy_version,
        "reward/mean": float(scores.total.mean()),
        "reward/accuracy": float(scores.components[cfg.reward.accuracy_key].mean()),
        **{f"reward/{k}": float(v.mean()) for k, v in scores.components.items()},
        "reward/timeouts": scores.timeouts,
        "reward/errors": scores.errors,
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(np.mean([f == "length" for f in rollouts.finish_reasons])),
        **{f"response_length/{k}": v for k, v in by_outcome.items() if v is not None},
        "response/long_share": float(thinks(rollouts.texts).mean()),
        "data/prompts_sampled": sampled.prompts_sampled,
        **worse_gap(train, sync),  # the step's batch proved the push before it, a probe the push after it
        "time/rollout_s": rollouts.gen_seconds,
        "time/reward_s": scores.seconds,
        **({"time/reference_s": sampled.reference_seconds} if sampled.ref_logprobs is not None else {}),
        "time/train_s": train_s,
        "throughput/tokens_per_s": float(lengths.sum()) / max(rollouts.gen_seconds, 1e-9),
    }
    row["time/step_s"] = time.perf_counter() - started
    return row


def report_reward_failures(scores: Scores) -> None:
    if scores.error_messages:
        counts = f"{scores.timeouts} timeouts, {scores.errors} errors"
        print(f"  reward failures ({counts}), first: {scores.error_messages[0]}", flush=True)
