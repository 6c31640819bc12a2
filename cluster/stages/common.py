"""What every stage needs: its run folder, the base model, sampling specs, checkpoints and a summary.

A stage's run folder is ``<output_dir>/<name>/``: the resolved ``config.yaml``, ``metrics.jsonl``,
TensorBoard events, ``checkpoints/step-<N>/``, ``plots/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cluster.config import RunConfig, dump_config
from cluster.errors import DataError
from cluster.payloads import SamplingSpec
from cluster.stages import checkpoint


def sampling_spec(cfg: RunConfig, kind: Literal["train", "eval", "greedy"]) -> SamplingSpec:
    """How a stage samples: ``train`` rollouts (with the engine's logprobs), sampled ``eval`` at the rollout
    temperature, or ``greedy``."""
    stop, max_tokens = tuple(cfg.rollout.stop), cfg.model.max_response_len
    if kind == "train":
        return SamplingSpec(
            temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=max_tokens, stop=stop
        )
    if kind == "eval":
        return SamplingSpec(temperature=cfg.rollout.temperature, max_tokens=max_tokens, stop=stop, logprobs=False)
    if kind == "greedy":
        return SamplingSpec(temperature=0.0, max_tokens=max_tokens, stop=stop, logprobs=False)
    raise ValueError(f"unknown sampling kind {kind!r}: expected 'train', 'eval' or 'greedy'")


def every(k: int, step: int) -> bool:
    """True on every k-th step (never for k = 0)."""
    return bool(k) and step % k == 0


@dataclass(kw_only=True)
class StageStart:
    """Where a stage begins: its model, tokenizer and the state of its last checkpoint (if resumed)."""

    base_model: str
    tokenizer: object
    last_checkpoint: Path | None
    state: dict


def open_run(cfg: RunConfig, resume: bool) -> StageStart:
    """Prepare the run folder (moving an old run aside unless resuming) and resolve the base model. Ray is
    not started yet: bad data should stop a run before any actor exists."""
    run_dir = cfg.run_dir
    if not resume:
        _refuse_moving_the_model(cfg)
        archive_previous_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    base_model = resolve_model(cfg)
    from transformers import AutoTokenizer

    from cluster.data.prompts import check_think_opening

    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=cfg.model.trust_remote_code)
    check_think_opening(cfg, tokenizer)
    last = checkpoint.latest(run_dir) if resume else None
    state = checkpoint.load_driver_state(last) if last else {"step": 0, "data_position": 0, "evals": []}
    return StageStart(base_model=base_model, tokenizer=tokenizer, last_checkpoint=last, state=state)


def _refuse_moving_the_model(cfg: RunConfig) -> None:
    """A fresh run moves an old run folder aside: not when the model it starts from lives in that folder."""
    model, run_dir = Path(cfg.model.path).expanduser(), cfg.run_dir
    if model.exists() and run_dir.is_dir() and model.resolve().is_relative_to(run_dir.resolve()):
        raise DataError(
            f"model.path {cfg.model.path} is inside {run_dir}, the folder this run would write (and move the old "
            f"one aside); give the run another name, e.g. --set name={cfg.name}-next"
        )


def archive_previous_run(run_dir: Path) -> None:
    """A fresh run never overwrites an old one: a non-empty run folder is renamed aside first."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        aside = run_dir.with_name(f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"previous run moved to {aside} (use --resume {run_dir} to continue a run instead)", flush=True)


def resolve_model(cfg: RunConfig) -> str:
    """The base model's path; the builtin one is built (once) under ``<output_dir>/_builtin``."""
    from cluster.data.builtin_model import BUILTIN_NAME, PretrainRecipe, build_base_model

    if cfg.model.path == BUILTIN_NAME:
        recipe = PretrainRecipe(
            digits=cfg.data.digits,
            seed=cfg.seed,
            eval_size=cfg.data.eval_size,
            steps=cfg.model.builtin_pretrain_steps,
            long_fraction=cfg.model.builtin_long_fraction,
            long_only_steps=cfg.model.builtin_long_only_steps,
        )
        return str(build_base_model(cfg.output_dir, recipe))
    if cfg.model.path.startswith("builtin:"):
        raise DataError(f"model.path: unknown builtin model {cfg.model.path!r}; known: {BUILTIN_NAME!r}")
    local = cfg.model.path.startswith((".", "/", "~")) or Path(cfg.model.path).exists()
    if local and not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        raise DataError(f"model.path: {cfg.model.path} is not a Hugging Face model folder (no config.json)")
    return cfg.model.path


def save_checkpoint(fleet, cfg: RunConfig, step: int, data_position: int, evals: list) -> None:
    """``data_position``: the prompt stream's position after the last batch trained on (not one in flight)."""
    state = {
        "step": step,
        "policy_version": step,
        "data_position": data_position,
        "evals": [e.to_dict() for e in evals],
    }
    path = checkpoint.save(cfg.run_dir, step, fleet.save_checkpoint, state, keep=cfg.keep_checkpoints)
    print(f"checkpoint: {path}", flush=True)
    fault_after_checkpoint(step)


def fault_after_checkpoint(step: int) -> None:
    """Fault injection for the resume tests: ``R1RAY_KILL_AFTER_CHECKPOINT=<step>`` SIGKILLs this driver right
    after that step's checkpoint is complete, as a crash or a lost node would."""
    if os.environ.get("R1RAY_KILL_AFTER_CHECKPOINT") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def write_summary(cfg: RunConfig, evals: list, steps: int, wall_s: float, plots: Path, skipped: int = 0) -> dict:
    summary = {
        "run": cfg.name,
        "data": {"overlong_prompts_skipped": skipped},
        "eval_before": evals[0].to_dict(),
        "eval_after": evals[-1].to_dict(),
        "evals": [e.to_dict() for e in evals],
        "steps": steps,
        "wall_s": wall_s,
        "plots": str(plots),
    }
    summary |= {"kind": "rl", "model": str(checkpoint.latest(cfg.run_dir))}
    write_json(cfg.run_dir / "summary.json", summary)
    return summary


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` whole or not at all (a temporary file renamed), so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def hold_out(rows: list, held_out: list | None, eval_size: int) -> tuple[list, list]:
    """Training and held-out rows: ``held_out`` when a file gave them, else the tail of ``rows`` (``eval_size``
    rows, at most a tenth of them)."""
    if held_out is not None:
        return rows, held_out
    cut = max(1, min(eval_size, len(rows) // 10))
    return rows[:-cut], rows[-cut:]


def check_batches(section: str, what: str, count: int, batch_size: int, world_size: int) -> None:
    """Enough rows for one batch, and batches that split over the learner ranks."""
    if count < batch_size:
        raise DataError(f"{section}.train: {count} training {what}, fewer than {section}.batch_size={batch_size}")
    if batch_size % world_size:
        raise DataError(f"{section}.batch_size ({batch_size}) must be divisible by learner.world_size")
