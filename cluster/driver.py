"""The GRPO driver: the loop of DeepSeek-R1-Zero's reinforcement learning, over Ray actors.

Each step: take prompts, sample G completions per prompt on the rollout workers, score them with
rule-based rewards, turn rewards into group-relative advantages, update the policy on the
learner ranks, broadcast the new weights to every rollout engine, log. Run it with
``r1ray train`` (the embedded demo) or ``r1ray train --config deploy/configs/<x>.yaml``.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import torch

from cluster import checkpoint
from cluster.config import DataError, RunConfig, dump_config
from cluster.grpo import dynamic_sampling_mask, group_advantages
from cluster.metrics import MetricsLogger, plot_run, progress_line
from cluster.payloads import Rollouts, SamplingSpec, TrainBatch
from cluster.prompts import Prompts
from rewards.format import format_reward

SYNC_PROBE_ROWS = 8


def train(cfg: RunConfig, resume: bool = False) -> dict:
    run_dir = cfg.run_dir
    if not resume:
        archive_previous_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    start_ray(cfg)
    base_model = resolve_model(cfg)
    from transformers import AutoTokenizer

    prompts = Prompts(cfg, AutoTokenizer.from_pretrained(base_model, trust_remote_code=cfg.model.trust_remote_code))
    last = checkpoint.latest(run_dir) if resume else None
    state = checkpoint.load_driver_state(last) if last else {"step": 0, "data_position": 0, "evals": []}
    prompts.train.position = state["data_position"]
    from cluster.fleet import Fleet

    fleet = Fleet(cfg, str(last or base_model), base_model, total_steps=cfg.grpo.steps)
    try:
        if last:
            fleet.load_checkpoint(str(last))
            print(f"resumed from {last} at step {state['step']}", flush=True)
        log = MetricsLogger(run_dir, cfg.name, resume_step=state["step"])
        evals: list[dict] = state["evals"]
        if not evals:
            evals.append(evaluate(fleet, prompts, cfg, step=0))
            print(f"eval before GRPO: {_eval_text(evals[-1])}", flush=True)
        started = time.perf_counter()
        position = grpo_loop(fleet, prompts, cfg, log, evals, first_step=state["step"] + 1)
        if evals[-1]["step"] != cfg.grpo.steps:
            evals.append(evaluate(fleet, prompts, cfg, step=cfg.grpo.steps))
        save_checkpoint(fleet, cfg, cfg.grpo.steps, position, evals)
        log.close()
        summary = write_summary(cfg, evals, time.perf_counter() - started)
    finally:
        fleet.shutdown()
    print_table(cfg, summary)
    return summary


def grpo_loop(fleet, prompts: Prompts, cfg: RunConfig, log: MetricsLogger, evals: list[dict], first_step: int) -> int:
    """The GRPO steps. With ``grpo.async_rollouts`` the next batch is generated (by the previous
    weights) while the learner trains on this one: one step off-policy, corrected by the ratio to
    the engine's logprobs."""
    overlap = cfg.grpo.async_rollouts
    position = prompts.train.position
    if first_step > cfg.grpo.steps:
        return position
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect") as pool:
        pending = pool.submit(collect, fleet, prompts, cfg)
        for step in range(first_step, cfg.grpo.steps + 1):
            t0 = time.perf_counter()
            rollouts, scores, sampled, position = pending.result()
            more = step < cfg.grpo.steps
            if overlap and more:
                pending = pool.submit(collect, fleet, prompts, cfg)
            advantages = group_advantages(
                torch.as_tensor(scores.total), cfg.grpo.group_size, scale=cfg.grpo.scale_advantages
            )
            batch = TrainBatch.from_rollouts(rollouts, advantages.numpy())
            t1 = time.perf_counter()
            train_metrics = fleet.train(batch)
            t2 = time.perf_counter()
            if overlap and more:
                wait([pending])  # the engines must finish sampling before they take new weights
            sync = fleet.sync_weights(step)
            if overlap:
                sync |= fleet.check_sync(batch.select(slice(0, SYNC_PROBE_ROWS)))
            row = step_metrics(step, cfg, rollouts, scores, sampled, prompts, train_metrics, sync, t0, t1, t2)
            log.log(row)
            print(progress_line(row, cfg.grpo.steps), flush=True)
            if scores.error_messages:
                print(
                    f"  reward failures ({scores.timeouts} timeouts, {scores.errors} errors), first: "
                    f"{scores.error_messages[0]}",
                    flush=True,
                )
            if cfg.eval_every and step % cfg.eval_every == 0 and more:
                evals.append(evaluate(fleet, prompts, cfg, step=step))
                print(f"eval at step {step}: {_eval_text(evals[-1])}", flush=True)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and more:
                save_checkpoint(fleet, cfg, step, position, evals)
            if not overlap and more:
                pending = pool.submit(collect, fleet, prompts, cfg)
    return position


def collect(fleet, prompts: Prompts, cfg: RunConfig):
    """Sample and score one batch of groups; with DAPO dynamic sampling, keep groups whose rewards differ."""
    g, want = cfg.grpo.group_size, cfg.grpo.prompts_per_step
    spec = SamplingSpec(
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        max_tokens=cfg.model.max_response_len,
        stop=tuple(cfg.rollout.stop),
    )
    kept, dropped, sampled = [], [], 0
    for _ in range(cfg.grpo.max_sampling_rounds if cfg.grpo.dynamic_sampling else 1):
        examples = prompts.train.take(want - len(kept))
        sampled += len(examples)
        rollouts = fleet.generate(prompts.encode(examples), g, spec)
        answers = [ex.answer for ex in examples for _ in range(g)]
        scores = fleet.score(rollouts.texts, answers)
        informative = dynamic_sampling_mask(torch.as_tensor(scores.total), g).numpy()
        for i, example in enumerate(examples):
            group = (rollouts, scores, i, example.answer)
            (kept if informative[i] or not cfg.grpo.dynamic_sampling else dropped).append(group)
        if len(kept) >= want:
            break
    groups = (kept + dropped)[:want]  # refill with uninformative groups (zero advantage) if rounds ran out
    rollouts, scores = _join_groups(groups, g)
    return rollouts, scores, sampled, prompts.train.position


def _join_groups(groups: list, g: int):
    from actors.scorer import Scores

    parts, score_parts = [], []
    for rollouts, scores, i, _ in groups:
        rows = slice(i * g, (i + 1) * g)
        parts.append(
            Rollouts(
                g,
                [rollouts.prompt_ids[i]],
                rollouts.tokens[rows],
                rollouts.lengths[rows],
                None if rollouts.logprobs is None else rollouts.logprobs[rows],
                rollouts.texts[rows],
                rollouts.finish_reasons[rows],
                rollouts.policy_version,
                rollouts.gen_seconds,
            )
        )
        score_parts.append(Scores(scores.total[rows], {k: v[rows] for k, v in scores.components.items()}))
    totals = Scores.concat(score_parts)
    rounds = list({id(scores): scores for _, scores, _, _ in groups}.values())  # one Scores per sampling round
    totals.timeouts, totals.errors = sum(r.timeouts for r in rounds), sum(r.errors for r in rounds)
    totals.seconds = sum(r.seconds for r in rounds)
    totals.error_messages = [m for r in rounds for m in r.error_messages][:5]
    joined = Rollouts.concat(parts)
    joined.gen_seconds = sum({id(r): r.gen_seconds for r, _, _, _ in groups}.values())
    return joined, totals


def step_metrics(step, cfg, rollouts, scores, sampled, prompts, train_metrics, sync, t0, t1, t2) -> dict:
    lengths = rollouts.lengths.astype(np.float64)
    fmt = [format_reward(t, think_opened=prompts.think_opened) for t in rollouts.texts]
    row = {
        "step": step,
        "policy_version": step,
        "rollout/policy_version": rollouts.policy_version,
        "rollout/staleness": step - 1 - rollouts.policy_version,
        "reward/mean": float(scores.total.mean()),
        "reward/accuracy": float(scores.components[cfg.reward.accuracy_key].mean()),
        "reward/format": float(np.mean(fmt)),
        **{f"reward/{k}": float(v.mean()) for k, v in scores.components.items()},
        "reward/timeouts": scores.timeouts,
        "reward/errors": scores.errors,
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "response_length/clip_ratio": float(np.mean([f == "length" for f in rollouts.finish_reasons])),
        "data/prompts_sampled": sampled,
        **train_metrics,
        **sync,
        "time/rollout_s": rollouts.gen_seconds,
        "time/reward_s": scores.seconds,
        "time/train_s": t2 - t1,
        "throughput/tokens_per_s": float(lengths.sum()) / max(rollouts.gen_seconds, 1e-9),
    }
    row["time/step_s"] = time.perf_counter() - t0
    return row


def evaluate(fleet, prompts: Prompts, cfg: RunConfig, step: int) -> dict:
    """Held-out pass@1 sampled at the rollout temperature (averaged over samples), greedy accuracy, format rate."""
    ids = prompts.eval_ids
    n = cfg.data.eval_samples
    results = {"step": step}
    for name, samples, temperature in (("accuracy", n, cfg.rollout.temperature), ("greedy_accuracy", 1, 0.0)):
        spec = SamplingSpec(temperature, 1.0, cfg.model.max_response_len, tuple(cfg.rollout.stop), logprobs=False)
        rollouts = fleet.generate(ids, samples, spec)
        answers = [ex.answer for ex in prompts.eval for _ in range(samples)]
        scores = fleet.score(rollouts.texts, answers)
        results[name] = float(scores.components[cfg.reward.accuracy_key].mean())
        if name == "accuracy":
            fmt = [format_reward(t, think_opened=prompts.think_opened) for t in rollouts.texts]
            results["format_rate"] = float(np.mean(fmt))
            results["response_length"] = float(rollouts.lengths.mean())
    return results


def save_checkpoint(fleet, cfg: RunConfig, step: int, data_position: int, evals: list[dict]) -> None:
    """``data_position``: the prompt stream's position after the last batch trained on (not one in flight)."""
    state = {"step": step, "policy_version": step, "data_position": data_position, "evals": evals}
    path = checkpoint.save(cfg.run_dir, step, fleet.save_checkpoint, state, keep=cfg.keep_checkpoints)
    print(f"checkpoint: {path}", flush=True)


def write_summary(cfg: RunConfig, evals: list[dict], wall_s: float) -> dict:
    summary = {
        "run": cfg.name,
        "eval_before": evals[0],
        "eval_after": evals[-1],
        "evals": evals,
        "steps": cfg.grpo.steps,
        "wall_s": wall_s,
        "plots": str(plot_run(cfg.run_dir, evals)),
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_table(cfg: RunConfig, summary: dict) -> None:
    before, after = summary["eval_before"], summary["eval_after"]
    print("\n                      before    after")
    for key, label in (
        ("accuracy", "pass@1 (sampled)"),
        ("greedy_accuracy", "greedy accuracy"),
        ("format_rate", "format rate"),
    ):
        print(f"{label:<20} {before[key]:>8.3f} {after[key]:>8.3f}")
    print(f"GRPO steps {summary['steps']}, wall {summary['wall_s']:.0f} s")
    print(f"run directory: {cfg.run_dir}   plots: {summary['plots']}", flush=True)


def _eval_text(e: dict) -> str:
    return f"pass@1 {e['accuracy']:.3f}  greedy {e['greedy_accuracy']:.3f}  format {e['format_rate']:.3f}"


def archive_previous_run(run_dir: Path) -> None:
    """A fresh run never overwrites an old one: a non-empty run folder is renamed aside first."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        aside = run_dir.with_name(f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"previous run moved to {aside} (use --resume {run_dir} to continue a run instead)", flush=True)


def resolve_model(cfg: RunConfig) -> str:
    """The base model's path; the builtin one is built (once) under ``<output_dir>/_builtin``."""
    from cluster.demo_model import BUILTIN_NAME, build_base_model

    if cfg.model.path == BUILTIN_NAME:
        path = build_base_model(
            cfg.output_dir,
            digits=cfg.data.digits,
            seed=cfg.seed,
            eval_size=cfg.data.eval_size,
            steps=cfg.model.builtin_pretrain_steps,
            target_accuracy=cfg.model.builtin_target_accuracy,
        )
        return str(path)
    if cfg.model.path.startswith("builtin:"):
        raise DataError(f"model.path: unknown builtin model {cfg.model.path!r}; known: {BUILTIN_NAME!r}")
    local = cfg.model.path.startswith((".", "/", "~")) or Path(cfg.model.path).exists()
    if local and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise DataError(f"model.path: {cfg.model.path} is not a Hugging Face model folder (no config.json)")
    return cfg.model.path


def start_ray(cfg: RunConfig) -> None:
    """Join the configured cluster (or RAY_ADDRESS, as under ``ray job submit``), else start a local one."""
    import ray

    from cluster.placement import required_cpus

    if ray.is_initialized():
        return
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    context = ray.init(
        address="local",
        num_cpus=cfg.cluster.num_cpus or max(os.cpu_count() or 1, int(np.ceil(required_cpus(cfg)))),
        include_dashboard=True,
        dashboard_host=cfg.cluster.dashboard_host,
        dashboard_port=cfg.cluster.dashboard_port,
    )
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)
