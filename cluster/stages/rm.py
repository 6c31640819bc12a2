"""The reward-model stage: Bradley-Terry training on preference pairs, on the same FSDP2 learner ranks.

``r1ray rm`` trains the scalar head (and the body) of a sequence-classification model started from
``model.path`` (or, with ``rm.score: likelihood``, the language model itself, scored by its mean
log-probability of the response) on ``rm.train`` pairs (``cluster/data/pairs.py``), ``rm.batch_size``
pairs per optimizer step, ``rm.epochs`` passes in a shuffled order fixed by ``seed``. The held-out
pairwise accuracy and loss are measured before, every ``eval_every`` steps and after. The output model
is the last checkpoint, in Hugging Face format (``AutoModelForSequenceClassification``, or a causal LM
whose config says ``reward_score: likelihood``); ``reward.models`` serves it as a reward in a later RL
stage (``actors/reward_model.py``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cluster.algo.pairwise import PairwiseObjective, pairwise_metrics
from cluster.config import RunConfig
from cluster.data.pairs import Pair, epoch_pair_batches, load_pairs, pair_batch
from cluster.errors import DataError, Stopped
from cluster.progress import track
from cluster.runtime.metrics import MetricsLogger
from cluster.stages import checkpoint
from cluster.stages.common import check_batches, every, hold_out, open_run, write_json
from cluster.stages.stopping import STOP


def split_pairs(cfg: RunConfig, tokenizer) -> tuple[list[Pair], list[Pair]]:
    """Training and held-out pairs: ``rm.eval``, else the tail of ``rm.train`` (``rm.eval_size`` pairs, at most a
    tenth of the file)."""
    r = cfg.rm
    if not r.train:
        raise DataError("rm.train: no preference pairs given (a .jsonl/.json/.parquet file of prompt/chosen/rejected)")
    pairs = load_pairs(r.train, cfg, tokenizer)
    pairs, held_out = hold_out(pairs, load_pairs(r.eval, cfg, tokenizer) if r.eval else None, r.eval_size)
    check_batches("rm", "pairs", len(pairs), r.batch_size, cfg.learner.world_size)
    return pairs, held_out


def heldout_metrics(fleet, pairs: list[Pair], batch_pairs: int = 128) -> dict[str, float]:
    """Pairwise accuracy, Bradley-Terry loss and mean reward margin of ``pairs`` under the learner's model."""
    chunks = [fleet.rewards(pair_batch(pairs[i : i + batch_pairs])) for i in range(0, len(pairs), batch_pairs)]
    _, metrics = pairwise_metrics(torch.as_tensor(np.concatenate(chunks)))
    return metrics


def run_rm(cfg: RunConfig, resume: bool = False) -> dict:
    from cluster.runtime.fleet import Fleet
    from cluster.runtime.ray_cluster import start_ray

    start = open_run(cfg, resume)
    pairs, held_out = split_pairs(cfg, start.tokenizer)
    size = cfg.rm.batch_size
    plan = [b for epoch in range(cfg.rm.epochs) for b in epoch_pair_batches(len(pairs), size, cfg.seed, epoch)]
    print(f"rm: {len(pairs)} training pairs, {len(held_out)} held out, {len(plan)} steps", flush=True)
    start_ray(cfg)
    STOP.install(cfg.cluster.stop_grace_s)
    last, done = start.last_checkpoint, start.state["step"]
    model = str(last or start.base_model)
    fleet = Fleet(cfg, model, start.base_model, optimizer_steps=len(plan), rollouts=False, head="reward")
    objective = PairwiseObjective()
    try:
        if last:
            fleet.load_checkpoint(str(last))
            print(f"resumed from {last} at step {done}", flush=True)
        evals = list(start.state["evals"])
        if not evals:
            evals.append({"step": 0, **heldout_metrics(fleet, held_out)})
            print(f"held-out before RM training: {_text(evals[-1])}", flush=True)
        log = MetricsLogger.of_run(cfg, resume_step=done)
        began = time.perf_counter()
        for step in track(range(done + 1, len(plan) + 1), "rm", already=done):
            started = time.perf_counter()
            metrics = fleet.train(pair_batch([pairs[i] for i in plan[step - 1]]), objective)
            row = {"step": step, "epoch": (step - 1) * cfg.rm.epochs // len(plan), **metrics}
            row["time/step_s"] = time.perf_counter() - started
            if every(cfg.eval_every, step) and step < len(plan):
                evals.append({"step": step, **heldout_metrics(fleet, held_out)})
                row |= {f"eval/{k}": v for k, v in evals[-1].items() if k != "step"}
            log.log(row)
            shown = f" | held-out {_text(evals[-1])}" if evals[-1]["step"] == step else ""
            print(
                f"rm step {step:>4}/{len(plan)} | loss {row['loss']:.4f} | acc {row['accuracy']:.3f}{shown} | "
                f"{row['time/step_s']:.2f}s",
                flush=True,
            )
            if every(cfg.checkpoint_every, step) and step < len(plan):
                _save(fleet, cfg, step, evals)
            if STOP.requested and step < len(plan):
                if not every(cfg.checkpoint_every, step):
                    _save(fleet, cfg, step, evals)
                STOP.done()
                raise Stopped(f"stopped after RM step {step} of {len(plan)} (SIGTERM)", str(cfg.run_dir))
        if evals[-1]["step"] != len(plan):
            evals.append({"step": len(plan), **heldout_metrics(fleet, held_out)})
        final = _save(fleet, cfg, len(plan), evals)
        log.close()
    finally:
        fleet.shutdown()
    before, after = evals[0], evals[-1]
    summary = {
        "run": cfg.name,
        "kind": "rm",
        "model": str(final),
        "steps": len(plan),
        "pairs": {"train": len(pairs), "eval": len(held_out)},
        "eval_accuracy_before": before["accuracy"],
        "eval_accuracy_after": after["accuracy"],
        "eval_loss_before": before["loss"],
        "eval_loss_after": after["loss"],
        "evals": evals,
        "wall_s": time.perf_counter() - began,
    }
    write_json(cfg.run_dir / "summary.json", summary)
    print(
        f"rm done: held-out accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, "
        f"loss {before['loss']:.4f} -> {after['loss']:.4f}; model: {final}",
        flush=True,
    )
    return summary


def _text(metrics: dict[str, float]) -> str:
    return f"accuracy {metrics['accuracy']:.3f} loss {metrics['loss']:.4f}"


def _save(fleet, cfg: RunConfig, step: int, evals: list[dict]):
    driver = {"step": step, "data_position": step, "evals": evals}
    path = checkpoint.save(cfg.run_dir, step, fleet.save_checkpoint, driver, keep=cfg.keep_checkpoints)
    print(f"checkpoint: {path}", flush=True)
    return path
