"""The SFT stage: masked next-token loss on response tokens, on the same FSDP2 learner ranks as RL.

R1's cold start, its SFT after rejection sampling and distillation are all this stage (``r1ray sft``).
Rows come from ``sft.train`` (``cluster/data/sft_data.py``); each optimizer step takes one batch of
``sft.batch_size`` rows, bucketed by length. The held-out loss is measured before, every
``sft.eval_every`` steps and after; with ``sft.generate_eval`` a rollout engine also measures
generation accuracy on ``data``'s held-out prompts before and after (the weights are pushed to it
first). The output model is the last checkpoint, in Hugging Face format.
"""

from __future__ import annotations

import time

from cluster.algo.sft import SFTObjective
from cluster.config import RunConfig
from cluster.data.sft_data import SFTRow, epoch_batches, load_sft_rows, sft_batch
from cluster.errors import DataError, Stopped
from cluster.progress import track
from cluster.runtime.metrics import MetricsLogger
from cluster.stages import checkpoint
from cluster.stages.common import check_batches, every, hold_out, open_run, write_json
from cluster.stages.evaluate import EvalResult, evaluate
from cluster.stages.stopping import STOP


def split_rows(cfg: RunConfig, tokenizer) -> tuple[list[SFTRow], list[SFTRow], int]:
    """Training and held-out rows, and how many were left out for length."""
    s = cfg.sft
    if not s.train:
        raise DataError("sft.train: no SFT data given (a .jsonl/.json/.parquet file of prompt/response rows)")
    rows, skipped = load_sft_rows(s.train, cfg, tokenizer)
    held_out = None
    if s.eval:
        held_out, more = load_sft_rows(s.eval, cfg, tokenizer)
        skipped += more
    rows, held_out = hold_out(rows, held_out, s.eval_size)
    check_batches("sft", "rows", len(rows), s.batch_size, cfg.learner.world_size)
    return rows, held_out, skipped


def heldout_loss(fleet, rows: list[SFTRow], batch_rows: int = 256) -> float:
    """Mean negative log-likelihood per response token of ``rows`` under the learner's model."""
    nll, tokens = 0.0, 0
    for i in range(0, len(rows), batch_rows):
        batch = sft_batch(rows[i : i + batch_rows])
        lp = fleet.logprobs(batch)
        nll -= float(lp.sum())
        tokens += int(batch.response_lens.sum())
    return nll / max(tokens, 1)


def run_sft(cfg: RunConfig, resume: bool = False) -> dict:
    from cluster.data.prompts import Prompts
    from cluster.runtime.fleet import Fleet
    from cluster.runtime.ray_cluster import start_ray

    start = open_run(cfg, resume)
    rows, held_out, skipped = split_rows(cfg, start.tokenizer)
    plan = [b for epoch in range(cfg.sft.epochs) for b in _epoch(rows, cfg, epoch)]
    prompts = Prompts(cfg, start.tokenizer) if cfg.sft.generate_eval else None
    print(f"sft: {len(rows)} training rows, {len(held_out)} held out, {len(plan)} steps ({skipped} rows too long)")
    start_ray(cfg)
    STOP.install(cfg.cluster.stop_grace_s)
    last, done = start.last_checkpoint, start.state["step"]
    fleet = Fleet(
        cfg, str(last or start.base_model), start.base_model, optimizer_steps=len(plan), rollouts=prompts is not None
    )
    objective = SFTObjective()
    try:
        if last:
            fleet.load_checkpoint(str(last))
            print(f"resumed from {last} at step {done}", flush=True)
        state = start.state | {"losses": start.state.get("losses", [])}
        evals = [EvalResult.from_dict(e) for e in state["evals"]]
        if not state["losses"]:
            state["losses"].append({"step": 0, "eval_loss": heldout_loss(fleet, held_out)})
            print(f"held-out loss before SFT: {state['losses'][-1]['eval_loss']:.4f}", flush=True)
        if prompts is not None and not evals:
            fleet.sync_weights(0, probe=prompts.probe_batch())
            evals.append(evaluate(fleet, prompts, cfg, step=0))
            print(f"eval before SFT: {evals[-1].text()}", flush=True)
        log = MetricsLogger.of_run(cfg, resume_step=done)
        began = time.perf_counter()
        for step in track(range(done + 1, len(plan) + 1), "sft", already=done):
            started = time.perf_counter()
            batch = sft_batch([rows[i] for i in plan[step - 1]])
            metrics = fleet.train(batch, objective)
            row = {"step": step, "epoch": (step - 1) * cfg.sft.epochs // len(plan), **metrics}
            row |= {"tokens": int(batch.response_lens.sum()), "time/step_s": time.perf_counter() - started}
            if every(cfg.sft.eval_every, step) and step < len(plan):
                row["eval_loss"] = heldout_loss(fleet, held_out)
                state["losses"].append({"step": step, "eval_loss": row["eval_loss"]})
            log.log(row)
            shown = f" | eval loss {row['eval_loss']:.4f}" if "eval_loss" in row else ""
            print(
                f"sft step {step:>4}/{len(plan)} | loss {row['loss']:.4f}{shown} | {row['time/step_s']:.2f}s",
                flush=True,
            )
            if every(cfg.checkpoint_every, step) and step < len(plan):
                _save(fleet, cfg, step, state, evals)
            if STOP.requested and step < len(plan):
                if not every(cfg.checkpoint_every, step):
                    _save(fleet, cfg, step, state, evals)
                STOP.done()
                raise Stopped(f"stopped after SFT step {step} of {len(plan)} (SIGTERM)", str(cfg.run_dir))
        if state["losses"][-1]["step"] != len(plan):
            state["losses"].append({"step": len(plan), "eval_loss": heldout_loss(fleet, held_out)})
        if prompts is not None and evals[-1].step != len(plan):
            fleet.sync_weights(len(plan), probe=prompts.probe_batch())
            evals.append(evaluate(fleet, prompts, cfg, step=len(plan)))
        final = _save(fleet, cfg, len(plan), state, evals)
        log.close()
    finally:
        fleet.shutdown()
    summary = {
        "run": cfg.name,
        "kind": "sft",
        "model": str(final),
        "steps": len(plan),
        "rows": {"train": len(rows), "eval": len(held_out), "skipped_too_long": skipped},
        "eval_loss_before": state["losses"][0]["eval_loss"],
        "eval_loss_after": state["losses"][-1]["eval_loss"],
        "losses": state["losses"],
        "wall_s": time.perf_counter() - began,
    }
    if evals:
        summary |= {"eval_before": evals[0].to_dict(), "eval_after": evals[-1].to_dict()}
    write_json(cfg.run_dir / "summary.json", summary)
    after = f"held-out loss {summary['eval_loss_before']:.4f} -> {summary['eval_loss_after']:.4f}"
    gen = f"; {evals[0].text()} -> {evals[-1].text()}" if evals else ""
    print(f"sft done: {after}{gen}\nmodel: {final}", flush=True)
    return summary


def _epoch(rows: list[SFTRow], cfg: RunConfig, epoch: int) -> list[list[int]]:
    return epoch_batches(rows, cfg.sft.batch_size, cfg.seed, epoch, bucket=cfg.sft.bucket_by_length)


def _save(fleet, cfg: RunConfig, step: int, state: dict, evals: list[EvalResult]):
    driver = {"step": step, "data_position": step, "losses": state["losses"], "evals": [e.to_dict() for e in evals]}
    path = checkpoint.save(cfg.run_dir, step, fleet.save_checkpoint, driver, keep=cfg.keep_checkpoints)
    print(f"checkpoint: {path}", flush=True)
    return path
