"""``r1ray`` command line: the stages (train, sft, sample, rm, eval), pipelines, data, validate, submit, monitor.

Heavy imports (torch, vLLM, Ray) happen only after the config has been parsed, so ``--help`` and
config errors are fast. A config error prints one line naming the field and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config import load_config
from cluster.errors import ConfigError, DataError, LearnerLost, RunAborted, Stopped

STAGE_COMMANDS = {
    "train": ("rl", "run GRPO (no arguments: the embedded demo)"),
    "sft": ("sft", "supervised fine-tuning on sft.train (cold start, SFT after rejection sampling, distillation)"),
    "sample": ("sample", "rejection sampling: k samples per prompt, keep those passing every filter, write JSONL"),
    "rm": ("rm", "train a Bradley-Terry reward model on rm.train preference pairs"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1ray", description="The DeepSeek-R1 recipe on Ray: SFT, GRPO, sampling.")
    sub = parser.add_subparsers(dest="command", required=True)

    def config_args(p: argparse.ArgumentParser, default_help: str) -> None:
        p.add_argument("--config", help=f"experiment YAML ({default_help})")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one field, e.g. --set grpo.steps=10 (repeatable)",
        )

    for command, (_, text) in STAGE_COMMANDS.items():
        stage = sub.add_parser(command, help=text)
        config_args(stage, "default: deploy/configs/demo.yaml")
        stage.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from its latest checkpoint")

    ev = sub.add_parser("eval", help="evaluate a model: pass@k, cons@k, greedy accuracy -> report.json")
    config_args(ev, "default: deploy/configs/demo.yaml; supplies template, rewards, rollout settings")
    ev.add_argument("--model", help="Hugging Face model folder or checkpoint (default: model.path)")
    ev.add_argument("--data", help="JSONL/Parquet problems with prompt/answer columns (default: eval.data)")
    ev.add_argument("--samples", type=int, help="samples per problem, k (default: eval.samples)")
    ev.add_argument("--temperature", type=float, help="sampling temperature (default: eval.temperature = 0.6)")
    ev.add_argument("--top-p", type=float, help="nucleus threshold (default: eval.top_p = 0.95)")
    ev.add_argument("--out", help="folder of report.json (default: runs/<name>)")

    pipe = sub.add_parser("pipeline", help="run a pipeline of stages (deploy/pipelines/<x>.yaml), skipping done ones")
    config_args(pipe, "a pipeline file; --set changes its shared sections")

    validate = sub.add_parser("validate", help="check a config or a pipeline file and print it resolved")
    config_args(validate, "default: deploy/configs/demo.yaml")

    submit = sub.add_parser("submit", help="submit `r1ray train` as a Ray job and stream its logs")
    config_args(submit, "path inside the working dir")
    submit.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard / Jobs API address")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working_dir")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")

    from cluster.data.prepare import add_parser
    from cluster.monitor import add_parser as add_monitor_parser
    from cluster.monitor import add_tensorboard_parser

    add_parser(sub)
    add_monitor_parser(sub)
    add_tensorboard_parser(sub)
    return parser


def _eval_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "model.path": args.model,
        "eval.data": args.data,
        "eval.samples": args.samples,
        "eval.temperature": args.temperature,
        "eval.top_p": args.top_p,
    }
    return [*args.overrides, *(f"{key}={value}" for key, value in flags.items() if value is not None)]


def _load(args: argparse.Namespace):
    resume = getattr(args, "resume", None)
    overrides = _eval_overrides(args) if args.command == "eval" else args.overrides
    if not resume:
        return load_config(args.config, overrides)
    run = Path(resume)
    config = args.config or run / "config.yaml"
    if not Path(config).is_file():
        raise ConfigError(f"config error: --resume {resume}: no config.yaml there")
    # The run folder named on the command line is the one resumed, wherever the config said it was.
    cfg = load_config(config, [*overrides, f"output_dir={run.resolve().parent}", f"name={run.resolve().name}"])
    from cluster.stages import checkpoint

    last = checkpoint.latest(run)
    if args.command == "sample" and (run / "chunks").is_dir():
        return cfg  # sampling resumes from its written chunks
    if last is None:
        raise ConfigError(f"config error: --resume {resume}: no complete checkpoint under {run / 'checkpoints'}")
    done = checkpoint.load_driver_state(last)["step"]
    if args.command == "train" and cfg.grpo.steps < done:
        raise ConfigError(f"config error: grpo.steps ({cfg.grpo.steps}) is below the checkpoint's step {done}")
    return cfg


def _is_pipeline(path: str | None) -> bool:
    if not path or not Path(path).is_file():
        return False
    import yaml

    try:
        tree = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError:
        return False
    return isinstance(tree, dict) and "stages" in tree


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("monitor", "tensorboard"):
        from cluster import monitor

        return monitor.run(args) if args.command == "monitor" else monitor.run_tensorboard(args)
    if args.command == "data":
        from cluster.data.prepare import run as prepare

        try:
            return prepare(args)
        except DataError as err:
            print(f"r1ray: error: {err}", file=sys.stderr)
            return 2
    if args.command == "pipeline" or (args.command == "validate" and _is_pipeline(args.config)):
        return _pipeline(args)
    try:
        cfg = _load(args)
    except ConfigError as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        from cluster.config import dump_config

        try:
            check_model_files(cfg)
        except DataError as err:
            print(f"r1ray: error: {err}", file=sys.stderr)
            return 2
        print(dump_config(cfg), end="")
        print(f"r1ray: config OK ({args.config or 'deploy/configs/demo.yaml'})", file=sys.stderr)
        return 0
    if args.command == "submit":
        from cluster.runtime.submit import submit

        return submit(args.address, args.config, args.overrides, args.working_dir, wait=not args.no_wait)
    _quiet_and_stoppable()
    from cluster.stages.run import run_stage

    try:
        kind = "eval" if args.command == "eval" else STAGE_COMMANDS[args.command][0]
        summary = run_stage(kind, cfg, resume=bool(getattr(args, "resume", None)), out=getattr(args, "out", None))
    except DataError as err:  # bad data rows or model folder: a message, not a traceback
        print(f"r1ray: error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"r1ray: {stop}; resume with: r1ray {args.command} --resume {stop.resume_hint}", flush=True)
        return 0
    except (RunAborted, LearnerLost) as err:
        hint = f"r1ray {args.command} --resume {cfg.run_dir}"
        print(f"r1ray: error: {err}; the last checkpoint resumes with: {hint}", file=sys.stderr)
        return 1
    return 0 if summary else 1


def _pipeline(args: argparse.Namespace) -> int:
    from cluster.stages.pipeline import PipelineError, load_pipeline

    try:
        if not args.config:
            raise PipelineError("pipeline error: --config PIPELINE.yaml is required")
        pipeline = load_pipeline(args.config, args.overrides)
    except (ConfigError, PipelineError) as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        try:
            for stage in pipeline.stages:
                check_model_files(pipeline.config(stage, pipeline.placeholders()))
        except DataError as err:
            print(f"r1ray: error: {err}", file=sys.stderr)
            return 2
        print(pipeline.describe())
        print(f"r1ray: pipeline OK ({args.config})", file=sys.stderr)
        return 0
    _quiet_and_stoppable()
    from cluster.stages.pipeline import run_pipeline

    try:
        run_pipeline(pipeline)
    except DataError as err:
        print(f"r1ray: error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"r1ray: {stop}; resume with: r1ray pipeline --config {args.config}", flush=True)
        return 0
    except PipelineError as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    except (RunAborted, LearnerLost) as err:
        print(f"r1ray: error: {err}; re-run to resume: r1ray pipeline --config {args.config}", file=sys.stderr)
        return 1
    return 0


def check_model_files(cfg) -> None:
    """What can be checked against a local model folder before anything starts: a chat template's
    ``<think>`` opening against ``data.chat_opens_think``."""
    if cfg.data.template != "chat" or not (Path(cfg.model.path).expanduser() / "config.json").is_file():
        return
    from transformers import AutoTokenizer

    from cluster.data.prompts import check_think_opening

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    check_think_opening(cfg, tokenizer)


def _quiet_and_stoppable() -> None:
    import os
    import signal

    # One line per step on the console: no progress bars from Hugging Face downloads/loads/saves.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    def stop(signum, frame):
        # `ray job stop` sends SIGTERM: unwind through the stage's `finally` so the actors are shut down.
        # Once ray.init has run, Ray's own handler (sys.exit) does the same; this covers the time before.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)

    from cluster.monitor import apply_dashboard_env

    # While `r1ray monitor` runs, a local cluster this stage starts shows its curves on the dashboard's Metrics page.
    apply_dashboard_env()


if __name__ == "__main__":
    sys.exit(main())
