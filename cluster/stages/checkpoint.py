"""Checkpoints under ``runs/<name>/checkpoints/step-<N>/``: written to a temporary folder, then renamed.

A checkpoint holds the policy in Hugging Face format (loadable by vLLM and transformers), the
learner's optimizer / LR-schedule / torch RNG state (``trainer_state.pt``) and the driver's state
(``driver_state.json``: step, policy version, data position, evaluations). The data order is a
pure function of the position, so a resume trains on the same prompts in the same order; the
vLLM engines are re-seeded, so their samples differ from an uninterrupted run.
A folder without ``driver_state.json`` is incomplete and never resumed from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

DRIVER_STATE = "driver_state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def save(run_dir: Path, step: int, write_learner_state, driver_state: dict[str, Any], keep: int) -> Path:
    """``write_learner_state(tmp_path)`` writes the model and trainer state; then the driver state; then rename."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_learner_state(str(tmp))
    (tmp / DRIVER_STATE).write_text(json.dumps(driver_state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    folders = (run_dir / "checkpoints").glob("step-*")
    done = [p for p in folders if p.is_dir() and not p.name.endswith(".tmp") and (p / DRIVER_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("step-")))


def latest(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_driver_state(path: Path) -> dict[str, Any]:
    return json.loads((path / DRIVER_STATE).read_text())
