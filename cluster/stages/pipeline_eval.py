"""A pipeline's ``evaluate:`` block: the same held-out evaluation after the base and after every model stage.

The block holds config sections (``eval``, ``reward``, ``data``, ...) that *replace* the stage's own
sections for the evaluation (so every stage is judged by the same rewards on the same problems,
whatever it trained with), plus four keys naming what the figures mean:

- ``reasoning_tasks`` / ``general_tasks``: the ``task`` values of reasoning and non-reasoning problems;
- ``reward_model``: the reward (a ``reward.models`` entry) whose mean score on non-reasoning samples is
  ``reward_model_score``;
- ``harmless``: the rule whose failures on all samples make ``harmful_rate``.

and one saying how: ``keep_engines`` keeps one fleet running from one evaluation to the next (and for
the ``sample`` and ``eval`` stages) and loads each model into it (``runtime/warm_fleet.py``); false starts a
fleet for each. The default is true where the fleet reserves no GPU, false where it does (a kept fleet
would hold its GPUs while the stages run).

The base model (the shared ``model.path``) is evaluated once, before the first ``sft`` / ``rl`` stage;
each evaluation goes to ``<stage folder>/eval/`` (``report.json``, ``figures.json``) and is skipped on a
re-run when its config is unchanged.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

from cluster.config import RunConfig, dump_config
from cluster.errors import ConfigError

FIGURE_KEYS = ("reasoning_tasks", "general_tasks", "reward_model", "harmless")
BLOCK_KEYS = (*FIGURE_KEYS, "keep_engines")
"""The block's keys that are not config sections."""
MODEL_KINDS = ("sft", "rl")


def check_block(block, source: str) -> dict:
    """The ``evaluate:`` mapping, checked for shape (each stage's resulting config is checked later)."""
    if block is None:
        return {}
    where = f"pipeline error: {source}: evaluate"
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping of config sections, got {type(block).__name__}")
    for key in ("reasoning_tasks", "general_tasks"):
        value = block.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{key}: expected a list of task names, got {value!r}")
    for key in ("reward_model", "harmless"):
        if key in block and not isinstance(block[key], str):
            raise ConfigError(f"{where}.{key}: expected a reward name, got {block[key]!r}")
    if not isinstance(block.get("keep_engines", True), bool):
        raise ConfigError(f"{where}.keep_engines: expected true or false, got {block['keep_engines']!r}")
    if "name" in block or "output_dir" in block or "model" in block:
        raise ConfigError(f"{where}: 'name', 'output_dir' and 'model' are set by the pipeline")
    return block


def sections(block: dict) -> dict:
    return {k: v for k, v in block.items() if k not in BLOCK_KEYS}


def eval_tree(stage_tree: dict, block: dict, model_path: str) -> dict:
    tree = copy.deepcopy(stage_tree)
    tree.update(copy.deepcopy(sections(block)))
    tree.setdefault("model", {})
    tree["model"] = dict(tree["model"]) | {"path": model_path}
    return tree


def check_config(block: dict, cfg: RunConfig, where: str) -> None:
    names = set(cfg.reward.weights)
    for key in ("reward_model", "harmless"):
        if key in block and block[key] not in names:
            raise ConfigError(f"{where}: evaluate.{key}: {block[key]!r} is not one of evaluate's reward.weights")
    if "reward_model" in block and block["reward_model"] not in cfg.reward.models:
        raise ConfigError(f"{where}: evaluate.reward_model: {block['reward_model']!r} is not a reward.models entry")
    if not (cfg.eval.data or cfg.data.eval):
        raise ConfigError(f"{where}: evaluate: eval.data names no held-out problems")


def run_evaluation(cfg: RunConfig, block: dict, out: Path, warm=None) -> dict:
    """Evaluate ``cfg.model.path`` into ``out`` (or read the figures of an earlier identical run); ``warm``: the
    pipeline's ``WarmFleet``, if it keeps one."""
    from cluster.stages.benchmark import run_eval
    from cluster.stages.common import write_json

    what = {k: v for k, v in block.items() if k != "keep_engines"}  # how it ran does not change the figures
    digest = hashlib.sha256((dump_config(cfg) + json.dumps(what, sort_keys=True)).encode()).hexdigest()[:16]
    marker = out / "figures.json"
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("digest") == digest:
            print(f"pipeline: evaluation in {out} is complete, skipped", flush=True)
            return done["figures"]
    print(f"\n--- evaluation of {cfg.model.path} -> {out} ---", flush=True)
    run_eval(cfg, out, warm)
    report = json.loads((out / "report.json").read_text())
    result = figures(report, block, cfg.reward.accuracy_key)
    write_json(marker, {"digest": digest, "figures": result})
    return result


def figures(report: dict, block: dict, accuracy_key: str) -> dict:
    """The pipeline's per-stage figures from an eval report's per-problem table."""
    from cluster.stages.benchmark import build_report

    problems = report["per_problem"]
    reasoning_tasks, general_tasks = set(block.get("reasoning_tasks", [])), set(block.get("general_tasks", []))
    reasoning = [p for p in problems if not reasoning_tasks or p.get("task") in reasoning_tasks]
    general = [p for p in problems if p.get("task") in general_tasks]
    out: dict = {}
    if reasoning:
        r = build_report(reasoning)
        out |= {
            "accuracy": r["pass@1"],
            "greedy_accuracy": r["greedy_accuracy"],
            "format_rate": r["format_rate"],
            "language_consistency": r["language_consistency"],
            "response_length": r["length_mean"],
            "length_correct": r["length_correct"],
            "length_incorrect": r["length_incorrect"],
        }
    if general:
        g = build_report(general)
        out["non_reasoning_score"] = g["pass@1"]
        if "reward_model" in block:
            out["reward_model_score"] = g["components"].get(block["reward_model"])
    if "harmless" in block:
        out["harmful_rate"] = 1.0 - report["components"].get(block["harmless"], 1.0)
    return out
