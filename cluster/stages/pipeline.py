"""Pipelines (``r1ray pipeline``): the DeepSeek-R1 recipe as one file of stages, run in order.

A pipeline file holds the shared sections once (``model``, ``data``, ``rollout``, ``reward``,
``learner``, ``cluster``, ... as in a run config) and a ``stages:`` list; each entry has a ``name``,
a ``kind`` (``sft``, ``rl``, ``sample``, ``eval``, ``rm``) and the sections it changes. A value
``{from: <stage>}`` names an earlier stage's output: ``model: {from: cold_start}`` starts from that
stage's model, ``data: {from: rejection}`` trains on (or evaluates) that stage's data, and
``{from: <stage>}`` in any other text field is that stage's main output path (e.g. a reward model's
``path``). Stage i runs in ``<output_dir>/<pipeline>/<i>-<name>/`` and writes ``stage.json`` when
complete; a re-run skips complete stages (until one has to run again: the ones after it run too),
resumes an interrupted one from its checkpoint, and ends with ``pipeline_report.json`` and a table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cluster.config import (
    RunConfig,
    dump_config,
    format_validation_error,
    load_config_tree,
    parse_override,
    set_dotted,
)
from cluster.errors import ConfigError, Stopped
from cluster.stages.pipeline_eval import check_block
from cluster.stages.run import STAGE_KINDS
from cluster.stages.stopping import STOP

OUTPUT = {"sft": "model", "rl": "model", "rm": "model", "sample": "data", "eval": "report"}
"""Where each kind of stage names its output (the key in its summary)."""
PRODUCES = {"sft": "model", "rl": "model", "rm": "reward model", "sample": "data", "eval": "report"}
"""What each kind of stage produces, for checking references."""
DATA_FIELD = {"sft": "sft.train", "rl": "data.train", "sample": "data.train", "eval": "eval.data", "rm": "rm.train"}
"""Where ``data: {from: <stage>}`` goes, per kind of the stage that says it."""
WARM_KINDS = ("sample", "eval")
"""Stages that take their engines from the pipeline's warm fleet (``runtime/warm_fleet.py``) where it keeps one."""
PIPELINE_KEYS = {"name", "output_dir", "stages", "evaluate"}
STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class PipelineError(ConfigError):
    """A pipeline file problem, phrased for its author (one line, exit code 2)."""


@dataclass(kw_only=True)
class Stage:
    index: int
    name: str
    kind: str
    tree: dict
    """The stage's config tree: shared sections with its own merged in, references still ``{from: ...}``."""
    refs: dict[str, str]
    """Dotted field -> the stage whose output it takes."""

    @property
    def folder(self) -> str:
        return f"{self.index}-{self.name}"


@dataclass(kw_only=True)
class Pipeline:
    name: str
    output_dir: Path
    stages: list[Stage]
    source: str
    shared: dict
    """The shared sections (the base model's config)."""
    evaluate: dict
    """The ``evaluate:`` block (``cluster/stages/pipeline_eval.py``); empty: no per-stage evaluation."""

    @property
    def root(self) -> Path:
        return self.output_dir / self.name

    def config(self, stage: Stage, outputs: dict[str, str]) -> RunConfig:
        """The stage's run config, its references replaced by the named stages' outputs."""
        tree = copy.deepcopy(stage.tree)
        for dotted, other in stage.refs.items():
            set_dotted(tree, dotted, outputs[other])
        tree |= {"name": stage.folder, "output_dir": str(self.root)}
        try:
            return RunConfig.model_validate(tree)
        except ValidationError as err:
            raise PipelineError(f"{self._where(stage)}: {format_validation_error(err)}") from None

    def eval_config(self, stage: Stage | None, outputs: dict[str, str], model_path: str) -> RunConfig:
        """The config evaluating ``model_path`` after ``stage`` (None: the base, before the first model stage)."""
        from cluster.stages.pipeline_eval import check_config, eval_tree

        tree = eval_tree(stage.tree if stage else self.shared, self.evaluate, model_path)
        for dotted, other in _references(tree).items():
            set_dotted(tree, dotted, outputs[other])
        folder = stage.folder if stage else "0-base"
        tree |= {"name": folder, "output_dir": str(self.root)}
        where = self._where(stage) if stage else f"pipeline error: {self.source}: evaluate (base model)"
        try:
            cfg = RunConfig.model_validate(tree)
        except ValidationError as err:
            raise PipelineError(f"{where}: evaluate: {format_validation_error(err)}") from None
        check_config(self.evaluate, cfg, where)
        return cfg

    def first_model_stage(self) -> Stage | None:
        from cluster.stages.pipeline_eval import MODEL_KINDS

        return next((s for s in self.stages if s.kind in MODEL_KINDS), None)

    def placeholders(self) -> dict[str, str]:
        """Each stage's output path as it will be named (for checking configs before anything ran)."""
        return {s.name: str(self.root / s.folder / OUTPUT[s.kind]) for s in self.stages}

    def _where(self, stage: Stage) -> str:
        return f"pipeline error: {self.source}: stage {stage.index} {stage.name!r} ({stage.kind})"

    def describe(self) -> str:
        lines = [f"pipeline {self.name}: {len(self.stages)} stages under {self.root}"]
        for stage in self.stages:
            refs = ", ".join(f"{field} <- {other}" for field, other in stage.refs.items())
            lines.append(f"  {stage.folder:<24} {stage.kind:<7} {refs}")
        return "\n".join(lines)


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """Read and check a pipeline file: stage kinds, names, references (to earlier stages, of a kind that
    produces what is asked for), and each stage's config as a run config; every problem is one line."""
    source = str(path)
    tree = load_config_tree(path)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    stages_raw = tree.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise PipelineError(f"pipeline error: {source}: 'stages' must be a non-empty list of {{name, kind, ...}}")
    name = tree.get("name", Path(source).stem)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9._-]+$", name):
        raise PipelineError(f"pipeline error: {source}: name must be letters, digits, '.', '_' or '-', got {name!r}")
    shared = {k: v for k, v in tree.items() if k not in PIPELINE_KEYS}
    stages: list[Stage] = []
    for index, raw in enumerate(stages_raw, start=1):
        where = f"pipeline error: {source}: stage {index}"
        if not isinstance(raw, dict):
            raise PipelineError(f"{where}: expected a mapping with 'name' and 'kind', got {type(raw).__name__}")
        stage_name, kind = raw.get("name"), raw.get("kind")
        if not isinstance(stage_name, str) or not STAGE_NAME.match(stage_name):
            raise PipelineError(f"{where}: 'name' is missing or not a name (letters, digits, '_', '-'): {stage_name!r}")
        where += f" {stage_name!r}"
        if kind not in STAGE_KINDS:
            raise PipelineError(f"{where}: unknown kind {kind!r}; known kinds: {', '.join(STAGE_KINDS)}")
        if any(s.name == stage_name for s in stages):
            raise PipelineError(f"{where}: a stage of that name comes earlier")
        own = {k: v for k, v in raw.items() if k not in ("name", "kind")}
        if "name" in own or "output_dir" in own:
            raise PipelineError(f"{where}: a stage's folder is set by the pipeline, not by 'name' or 'output_dir'")
        data_ref = own.pop("data", None) if _is_ref(own.get("data")) else None
        if isinstance(own.get("model"), dict) and "from" in own["model"]:
            # model: {from: X, ...} is model.path from X; the shared model section's other fields still apply.
            model = dict(own["model"])
            own["model"] = {k: v for k, v in model.items() if k != "from"} | {"path": {"from": model["from"]}}
        merged = _merge(copy.deepcopy(shared), own)
        if data_ref is not None:
            set_dotted(merged, DATA_FIELD[kind], data_ref)
        refs = _references(merged)
        earlier = {s.name: s for s in stages}
        for dotted, other in refs.items():
            if other == stage_name or other not in earlier:
                known = ", ".join(earlier) or "none"
                later = " (it comes later)" if any(r.get("name") == other for r in stages_raw[index:]) else ""
                raise PipelineError(
                    f"{where}: {dotted}: from {other!r} names no earlier stage{later}; earlier stages: {known}"
                )
            produced, wanted = PRODUCES[earlier[other].kind], _wanted(dotted)
            if kind == "rm" and wanted == "model" and produced == "reward model":
                wanted = produced  # a reward model trained further (on newer pairs)
            if wanted and produced != wanted:
                raise PipelineError(
                    f"{where}: {dotted}: stage {other!r} ({earlier[other].kind}) produces a {produced}, not a {wanted}"
                )
        stages.append(Stage(index=index, name=stage_name, kind=kind, tree=merged, refs=refs))
    output_dir = Path(tree.get("output_dir", "runs"))
    evaluate = check_block(tree.get("evaluate"), source)
    pipeline = Pipeline(
        name=name, output_dir=output_dir, stages=stages, source=source, shared=shared, evaluate=evaluate
    )
    for stage in stages:  # every stage's config, with placeholder paths for the outputs it takes
        _check_stage(pipeline, stage, pipeline.config(stage, pipeline.placeholders()))
    if evaluate:
        _check_evaluate(pipeline)
    return pipeline


def _check_evaluate(pipeline: Pipeline) -> None:
    """``evaluate:`` references stages that run before the base is evaluated (before the first model stage)."""
    from cluster.stages.pipeline_eval import MODEL_KINDS, sections

    first = pipeline.first_model_stage()
    if first is None:
        raise PipelineError(f"pipeline error: {pipeline.source}: evaluate: no sft or rl stage to evaluate")
    before = {s.name for s in pipeline.stages[: first.index - 1]}
    for dotted, other in _references(sections(pipeline.evaluate)).items():
        if other not in before:
            raise PipelineError(
                f"pipeline error: {pipeline.source}: evaluate.{dotted}: from {other!r} must name a stage before "
                f"the first model stage {first.name!r} (the base is evaluated there); stages before it: "
                f"{', '.join(sorted(before)) or 'none'}"
            )
    placeholders = pipeline.placeholders()
    pipeline.eval_config(None, placeholders, "base")
    for stage in pipeline.stages:
        if stage.kind in MODEL_KINDS:
            pipeline.eval_config(stage, placeholders, placeholders[stage.name])


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"from"} and isinstance(value["from"], str)


def _merge(base: dict, own: dict) -> dict:
    for key, value in own.items():
        if isinstance(value, dict) and not _is_ref(value) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def _references(tree: dict, prefix: str = "") -> dict[str, str]:
    found = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if _is_ref(value):
            found[dotted] = value["from"]
        elif isinstance(value, dict):
            found |= _references(value, dotted + ".")
    return found


def _wanted(dotted: str) -> str | None:
    """What a field that takes a stage's output needs (None: any path)."""
    if dotted == "model.path":
        return "model"
    if dotted.startswith("reward.models.") and dotted.endswith(".path"):
        return "reward model"
    if dotted in DATA_FIELD.values() or dotted in ("data.eval", "sample.mix", "sft.eval", "rm.eval"):
        return "data"
    return None


def _check_stage(pipeline: Pipeline, stage: Stage, cfg: RunConfig) -> None:
    """What each kind needs that a run config alone does not demand."""
    where = pipeline._where(stage)
    if stage.kind == "sft" and not cfg.sft.train:
        raise PipelineError(f"{where}: sft.train is missing (a file, or data: {{from: <sample stage>}})")
    if stage.kind == "rm" and not cfg.rm.train:
        raise PipelineError(f"{where}: rm.train is missing (a file of prompt/chosen/rejected rows)")
    if stage.kind == "sample" and cfg.data.train.startswith("builtin:") and cfg.sample.prompts is None:
        raise PipelineError(f"{where}: sample.prompts is missing (how many prompts of {cfg.data.train} to sample)")


def _digest(cfg: RunConfig) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]


def run_pipeline(pipeline: Pipeline) -> dict:
    """Run the stages in order (see the module docstring); returns the pipeline report."""
    from cluster.runtime.placement import required_cpus
    from cluster.runtime.ray_cluster import start_ray
    from cluster.runtime.warm_fleet import WarmFleet
    from cluster.stages.common import write_json
    from cluster.stages.pipeline_eval import MODEL_KINDS, run_evaluation

    pipeline.root.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, str] = {}
    report: list[dict] = []
    # One local cluster for every stage, as large as the largest stage needs (and the warm fleet).
    planned = pipeline.placeholders()
    cpus = max(required_cpus(pipeline.config(s, planned)) for s in pipeline.stages)
    first_model = pipeline.first_model_stage()
    warm = None
    # The warm fleet's users: every evaluation of the evaluate block, the sample and eval stages.
    users = [pipeline.config(s, planned) for s in pipeline.stages if s.kind in WARM_KINDS]
    if pipeline.evaluate and first_model is not None:
        base = str(pipeline.shared.get("model", {}).get("path"))
        users.append(pipeline.eval_config(None, planned, base))
        users += [pipeline.eval_config(s, planned, planned[s.name]) for s in pipeline.stages if s.kind in MODEL_KINDS]
    # Kept by default only where it holds no GPU: an idle engine would keep it from the training stages.
    gpus = any(c.rollout.gpus_per_worker or any(m.gpus for m in c.reward.models.values()) for c in users)
    if users and (pipeline.evaluate or {}).get("keep_engines", not gpus):
        warm = WarmFleet()
        # engines and scorers for the largest user, and every reward-model server any user names (kept idle)
        servers: dict[str, float] = {}
        for c in users:
            servers |= {n: max(spec.cpus, servers.get(n, 0.0)) for n, spec in c.reward.models.items()}
        own = [required_cpus(c, learners=False) - sum(m.cpus for m in c.reward.models.values()) for c in users]
        cpus += max(own) + sum(servers.values())
    # Started here, before the base evaluation (which would otherwise start it at its own size).
    cluster_cfg = pipeline.config(pipeline.stages[0], planned).model_copy(deep=True)
    if cluster_cfg.cluster.num_cpus is None:
        cluster_cfg.cluster.num_cpus = max(1, math.ceil(cpus))
    start_ray(cluster_cfg)

    def evaluate(stage: Stage | None, model_path: str) -> dict:
        cfg = pipeline.eval_config(stage, outputs, model_path)
        return run_evaluation(cfg, pipeline.evaluate, cfg.run_dir / "eval", warm)

    try:
        result = _run_stages(pipeline, outputs, report, first_model, evaluate, warm)
    finally:
        if warm is not None:
            warm.close()
    if pipeline.evaluate:
        from cluster.stages.pipeline_figures import finish_report

        finish_report(pipeline.root, result)
    write_json(pipeline.root / "pipeline_report.json", result)
    print_pipeline_table(result)
    print(f"pipeline report: {pipeline.root / 'pipeline_report.json'}", flush=True)
    return result


def _run_stages(pipeline: Pipeline, outputs: dict, report: list, first_model, evaluate, warm) -> dict:
    from cluster.stages import checkpoint
    from cluster.stages.common import write_json
    from cluster.stages.pipeline_eval import MODEL_KINDS
    from cluster.stages.run import run_stage

    upstream_ran = False
    for stage in pipeline.stages:
        if pipeline.evaluate and stage is first_model:
            base = str(pipeline.shared.get("model", {}).get("path"))
            report.append({"name": "base", "stage": "0-base", "kind": "base", "output": base, "wall_s": 0.0,
                           "eval": evaluate(None, base)})  # fmt: skip
        cfg = pipeline.config(stage, outputs)
        folder = cfg.run_dir
        marker = folder / "stage.json"
        done = json.loads(marker.read_text()) if marker.is_file() else None
        if done and not upstream_ran and done.get("config_digest") == _digest(cfg):
            print(f"pipeline: stage {stage.folder} ({stage.kind}) is complete, skipped", flush=True)
        else:
            if done:
                why = "an earlier stage ran again" if upstream_ran else "its config changed"
                print(f"pipeline: stage {stage.folder} runs again: {why}", flush=True)
            same = _started(pipeline).get(stage.folder) == _digest(cfg)
            partial = checkpoint.latest(folder) is not None or (folder / "chunks").is_dir()
            interrupted = not done and not upstream_ran and same and partial
            print(f"\n=== pipeline {pipeline.name}: stage {stage.folder} ({stage.kind})"
                  f"{', resumed' if interrupted else ''} ===", flush=True)  # fmt: skip
            if STOP.requested:  # a SIGTERM during the stage before: stop between stages
                raise Stopped(f"stopped before stage {stage.folder} (SIGTERM)", str(pipeline.root))
            _mark_started(pipeline, stage.folder, _digest(cfg))
            began = time.perf_counter()
            summary = run_stage(stage.kind, cfg, resume=interrupted, warm=warm if stage.kind in WARM_KINDS else None)
            output = summary[OUTPUT[stage.kind]] if stage.kind != "eval" else str(folder / "report.json")
            done = {
                "name": stage.name,
                "kind": stage.kind,
                "index": stage.index,
                "output": output,
                "config_digest": _digest(cfg),
                "figures": stage_figures(stage.kind, summary),
                "wall_s": time.perf_counter() - began,
                "summary": str(folder / "summary.json"),
            }
            write_json(marker, done)
            upstream_ran = True
        outputs[stage.name] = done["output"]
        row = {"name": stage.name, "stage": stage.folder, "kind": stage.kind, "output": done["output"]}
        row |= {"wall_s": done.get("wall_s"), "summary": done.get("summary"), **done["figures"]}
        if pipeline.evaluate and stage.kind in MODEL_KINDS:
            row["eval"] = evaluate(stage, done["output"])
        report.append(row)
    return {"pipeline": pipeline.name, "stages": report}


def _started(pipeline: Pipeline) -> dict[str, str]:
    """Stage folder -> the digest of the config it was started with (an interrupted stage resumes only if
    its config is still that one)."""
    path = pipeline.root / "started.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _mark_started(pipeline: Pipeline, folder: str, digest: str) -> None:
    from cluster.stages.common import write_json

    write_json(pipeline.root / "started.json", _started(pipeline) | {folder: digest})


def stage_figures(kind: str, summary: dict) -> dict:
    """The few numbers of a stage that go into the pipeline's table."""
    if kind == "eval":
        k = summary["samples_per_problem"]
        return {"pass@1": summary["pass@1"], f"cons@{k}": summary[f"cons@{k}"], "greedy": summary["greedy_accuracy"]}
    if kind == "sample":
        y = summary["yield"]
        return {"kept": y["kept"], "sampled": y["sampled"], "yield": y["yield"], "rows": y["rows"]}
    if kind == "rm":
        return {k: summary.get(k) for k in ("eval_accuracy_before", "eval_accuracy_after")}
    figures = {}
    if kind == "sft":
        figures |= {"eval_loss_before": summary["eval_loss_before"], "eval_loss_after": summary["eval_loss_after"]}
    if "eval_after" in summary:
        before, after = summary["eval_before"], summary["eval_after"]
        figures |= {
            "pass@1_before": before["accuracy"],
            "pass@1": after["accuracy"],
            "greedy_before": before["greedy_accuracy"],
            "greedy": after["greedy_accuracy"],
        }
    return figures


def print_pipeline_table(result: dict) -> None:
    print(f"\npipeline {result['pipeline']}")
    for row in result["stages"]:
        figures = {k: v for k, v in row.items() if k not in ("name", "stage", "kind", "output", "eval", "summary")}
        shown = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"  {row['stage']:<24} {row['kind']:<7} {shown}")
