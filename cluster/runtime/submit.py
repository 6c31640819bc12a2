"""``r1ray submit``: a thin layer over Ray's Jobs SDK that submits ``r1ray train`` and streams its logs.

Equivalent to::

    ray job submit --address http://127.0.0.1:8265 --working-dir . \\
        --runtime-env-json '{"excludes": ["runs/", ".venv/", ".git/"]}' \\
        -- r1ray train --config deploy/configs/<x>.yaml

The working directory is uploaded (without run outputs and the virtualenv); the cluster's nodes
must already have r1ray's dependencies installed (the cluster YAMLs in ``deploy/cluster`` do this).
With token authentication on, ``RAY_AUTH_TOKEN`` (or the token file) is sent by the SDK.
"""

from __future__ import annotations

import shlex
import sys

RUNTIME_EXCLUDES = ["runs/", ".venv/", ".git/", "**/__pycache__/", "*.egg-info/"]


def entrypoint(config: str | None, overrides: list[str]) -> str:
    """The job's command line: ``python -m cluster train`` works whether or not the console script is on PATH."""
    args = ["python", "-m", "cluster", "train"]
    if config:
        args += ["--config", config]
    for item in overrides:
        args += ["--set", item]
    return shlex.join(args)


def runtime_env(working_dir: str) -> dict:
    return {"working_dir": working_dir, "excludes": RUNTIME_EXCLUDES, "env_vars": {"PYTHONUNBUFFERED": "1"}}


def submit(address: str, config: str | None, overrides: list[str], working_dir: str, *, wait: bool = True) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint(config, overrides), runtime_env=runtime_env(working_dir))
    print(f"submitted job {job_id} to {address}", flush=True)
    if not wait:
        return 0
    import asyncio

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        print(f"\nstopping job {job_id}", file=sys.stderr)
        client.stop_job(job_id)
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
