"""One entry point for every stage kind, as the CLI and the pipeline runner call them."""

from __future__ import annotations

from pathlib import Path

from cluster.config import RunConfig

STAGE_KINDS = ("sft", "rl", "sample", "eval", "rm")


def run_stage(kind: str, cfg: RunConfig, *, resume: bool = False, out: str | Path | None = None, warm=None) -> dict:
    """Run stage ``kind`` on ``cfg``; returns its summary (also written to ``<run_dir>/summary.json``). A stop
    requested during the stage's last work does not abandon what follows it. ``warm``: a pipeline's
    ``runtime.warm_fleet.WarmFleet``, which ``sample`` and ``eval`` take their engines from and leave running."""
    from cluster.stages.stopping import STOP

    try:
        return _run(kind, cfg, resume, out, warm)
    finally:
        STOP.done()


def _run(kind: str, cfg: RunConfig, resume: bool, out: str | Path | None, warm) -> dict:
    if kind == "rl":
        from cluster.stages.rl import train

        return train(cfg, resume=resume)
    if kind == "sft":
        from cluster.stages.sft import run_sft

        return run_sft(cfg, resume=resume)
    if kind == "sample":
        from cluster.stages.sample import run_sample

        return run_sample(cfg, resume=resume, warm=warm)
    if kind == "eval":
        from cluster.stages.benchmark import run_eval

        return run_eval(cfg, Path(out) if out else None, warm)
    if kind == "rm":
        from cluster.stages.rm import run_rm

        return run_rm(cfg, resume=resume)
    raise ValueError(f"unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
