"""``r1ray`` command line: train, validate a config, submit a job to a Ray cluster.

Heavy imports (torch, vLLM, Ray) happen only after the config has been parsed, so ``--help`` and
config errors are fast. A config error prints one line naming the field and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config import load_config
from cluster.errors import ConfigError, DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1ray", description="GRPO training of reasoning models on Ray.")
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

    train = sub.add_parser("train", help="run GRPO (no arguments: the embedded demo)")
    config_args(train, "default: deploy/configs/demo.yaml")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue runs/<name> from its latest checkpoint")

    validate = sub.add_parser("validate", help="check a config and print it resolved")
    config_args(validate, "default: deploy/configs/demo.yaml")

    submit = sub.add_parser("submit", help="submit `r1ray train` as a Ray job and stream its logs")
    config_args(submit, "path inside the working dir")
    submit.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard / Jobs API address")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working_dir")
    submit.add_argument("--no-wait", action="store_true", help="print the job id and return")
    return parser


def _load(args: argparse.Namespace):
    resume = getattr(args, "resume", None)
    if not resume:
        return load_config(args.config, args.overrides)
    run = Path(resume)
    config = args.config or run / "config.yaml"
    if not Path(config).is_file():
        raise ConfigError(f"config error: --resume {resume}: no config.yaml there")
    # The run folder named on the command line is the one resumed, wherever the config said it was.
    cfg = load_config(config, [*args.overrides, f"output_dir={run.resolve().parent}", f"name={run.resolve().name}"])
    from cluster.stages import checkpoint

    last = checkpoint.latest(run)
    if last is None:
        raise ConfigError(f"config error: --resume {resume}: no complete checkpoint under {run / 'checkpoints'}")
    done = checkpoint.load_driver_state(last)["step"]
    if cfg.grpo.steps < done:
        raise ConfigError(f"config error: grpo.steps ({cfg.grpo.steps}) is below the checkpoint's step {done}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = _load(args)
    except ConfigError as err:
        print(f"r1ray: {err}", file=sys.stderr)
        return 2
    if args.command == "validate":
        from cluster.config import dump_config

        print(dump_config(cfg), end="")
        print(f"r1ray: config OK ({args.config or 'deploy/configs/demo.yaml'})", file=sys.stderr)
        return 0
    if args.command == "submit":
        from cluster.runtime.submit import submit

        return submit(args.address, args.config, args.overrides, args.working_dir, wait=not args.no_wait)
    import os
    import signal

    # One line per step on the console: no progress bars from Hugging Face downloads/loads/saves.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from cluster.stages.rl import train

    def stop(signum, frame):
        # `ray job stop` sends SIGTERM: unwind through train()'s `finally` so the actors are shut down.
        # Once ray.init has run, Ray's own handler (sys.exit) does the same; this covers the time before.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        summary = train(cfg, resume=bool(args.resume))
    except DataError as err:  # bad data rows or model folder: a message, not a traceback
        print(f"r1ray: error: {err}", file=sys.stderr)
        return 2
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
