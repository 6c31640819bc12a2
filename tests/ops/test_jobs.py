"""`r1ray train` as a Ray job: submitted with the `ray` CLI, with `r1ray submit`, and stopped with `ray job stop`.

One local head (dashboard on, 8 logical CPUs, auth disabled) serves both tests. The runs share the
session's output_dir (tests/conftest.py), so the builtin base model is pre-trained once (by the first job,
unless the demo e2e runs built it) and reused; each run has its own name and so its own run directory. Jobs
upload the repository as their working_dir, so the run directory is an absolute path outside it.
Run: `pytest tests/ops/test_jobs.py -v` (3-4 minutes on 2 busy CPU cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from cluster.runtime.metrics import RAY_GAUGES
from cluster.stages import checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")

SMOKE = "deploy/configs/smoke.yaml"
EXCLUDES = ["runs/", ".venv/", ".git/"]
ACTOR_PREFIXES = ("rollout-", "learner-", "reward-")
CHECKPOINT_FILES = ["model.safetensors", "config.json", "trainer_state.pt", checkpoint.DRIVER_STATE]
JOB_TIMEOUT_S = 420
GAUGES = {f"ray_{name}" for name in RAY_GAUGES.values()}


@pytest.fixture(scope="module")
def head(ray_head_factory):
    return ray_head_factory(
        extra_env={
            # The job's entrypoint runs `python` from PATH: make it this venv's interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # Ray reports metrics every 10 s by default; a smoke run's two steps take a few seconds.
            "RAY_metrics_report_interval_ms": "1000",
        },
        extra_args=["--num-cpus=8"],
    )


@pytest.fixture(scope="module")
def client(head) -> Iterator[JobSubmissionClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield JobSubmissionClient(head.dashboard_url)


@pytest.fixture(scope="module")
def output_dir(runs_root: Path) -> Path:
    return runs_root  # the base model the demo e2e runs built, if they ran


def smoke_overrides(output_dir: Path, name: str, *extra: str) -> list[str]:
    return [f"output_dir={output_dir}", f"name={name}", *extra]


def wait_for_status(client: JobSubmissionClient, job_id: str, wanted: set[JobStatus], timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


def job_log_tail(client: JobSubmissionClient, job_id: str, chars: int = 4000) -> str:
    return client.get_job_logs(job_id)[-chars:]


def assert_finished_run(run_dir: Path, steps: int) -> None:
    assert (run_dir / "summary.json").is_file(), sorted(p.name for p in run_dir.iterdir())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in rows] == list(range(1, steps + 1))


def scrape_r1ray_series(url: str) -> dict[str, set[str]]:
    """r1ray series on a node's Prometheus endpoint: metric name -> values of its `run` label."""
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    series: dict[str, set[str]] = {}
    for line in lines:
        if line.startswith("#") or "r1ray_" not in line:
            continue
        name = line.split("{")[0].split(" ")[0]
        run = re.search(r'\brun="([^"]*)"', line)
        series.setdefault(name, set()).add(run.group(1) if run else "")
    return series


class MetricsWatcher:
    """Scrapes a Prometheus endpoint in the background, remembering every r1ray series it has seen."""

    def __init__(self, url: str, interval_s: float = 0.5) -> None:
        self.url, self.interval_s = url, interval_s
        self.seen: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> MetricsWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def runs_with_all(self, names: set[str]) -> set[str]:
        return set.intersection(*(self.seen.get(name, set()) for name in names))

    def wait_for(self, names: set[str], run: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while run not in self.runs_with_all(names) and time.monotonic() < deadline:
            time.sleep(self.interval_s)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                scraped = scrape_r1ray_series(self.url)
            except OSError:
                scraped = {}
            for name, runs in scraped.items():
                self.seen.setdefault(name, set()).update(runs)
            self._stop.wait(self.interval_s)


def test_ray_job_submit_cli_runs_smoke_and_exports_gauges(head, client, output_dir, tmp_path):
    job_id = f"r1ray-cli-{uuid.uuid4().hex[:8]}"
    train = ["python", "-m", "cluster", "train", "--config", SMOKE]
    for item in smoke_overrides(output_dir, "job-cli"):
        train += ["--set", item]
    cmd = [
        str(RAY_BIN), "job", "submit",
        "--address", head.dashboard_url,
        "--submission-id", job_id,
        "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
        "--", *train,
    ]  # fmt: skip
    started = time.monotonic()
    with MetricsWatcher(head.metrics_url) as metrics:
        result = subprocess.run(cmd, env=head.env, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        seen_while_running = "job-cli" in metrics.runs_with_all(GAUGES)
        # The driver sets the gauges each step; give the last report a moment to reach the endpoint.
        metrics.wait_for(GAUGES, "job-cli", timeout_s=15)
    print(
        f"ray job submit: {time.monotonic() - started:.0f} s; all gauges seen before it returned: {seen_while_running}"
    )
    print(f"r1ray series seen: {sorted(metrics.seen)}")

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, job_log_tail(client, job_id)
    assert_finished_run(output_dir / "job-cli", steps=2)
    assert "ray_r1ray_reward_mean" in metrics.seen
    assert GAUGES <= set(metrics.seen), GAUGES - set(metrics.seen)
    assert "job-cli" in metrics.runs_with_all(GAUGES), metrics.seen


def run_actors(dashboard_url: str, ray_job_id: str | None = None, state: str | None = None) -> list:
    """The r1ray actors (rollout-*, learner-*, reward-*) on the cluster, of one Ray job and in one state if given."""
    from ray.util.state import list_actors

    filters = [("state", "=", state)] if state else []
    actors = list_actors(address=dashboard_url, filters=filters, detail=True, limit=1000)
    return [a for a in actors if (a.name or "").startswith(ACTOR_PREFIXES) and ray_job_id in (None, a.job_id)]


def run_processes(head, titles: set[str]) -> list[str]:
    """This head's live processes that belong to a run: its driver, its actors' workers, their vLLM engines."""
    found = []
    for pid in head.tagged_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith((*titles, "VLLM::")) or "-m cluster train" in cmdline:
            found.append(f"{pid} {cmdline[:120]}")
    return found


def latest_step(run_dir: Path) -> int:
    last = checkpoint.latest(run_dir)
    return int(last.name.removeprefix("step-")) if last else 0


def test_r1ray_submit_follows_a_job_that_ray_job_stop_unwinds_leaving_a_complete_checkpoint(head, client, output_dir):
    """`r1ray submit` (the SDK) submits a long run and streams its logs; `ray job stop` (the same call through the
    SDK) ends it after its step-2 checkpoint: the actors and processes go, the checkpoint is whole, and `r1ray
    submit` reports the job's end and exits non-zero."""
    run_dir = output_dir / "job-stop"
    cmd = [sys.executable, "-m", "cluster", "submit", "--address", head.dashboard_url, "--config", SMOKE]
    for item in smoke_overrides(output_dir, "job-stop", "grpo.steps=200", "checkpoint_every=1"):
        cmd += ["--set", item]
    cmd += ["--working-dir", str(REPO_ROOT)]
    submitter = subprocess.Popen(
        cmd, env=head.env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(submitter.stdout), daemon=True)
    reader.start()
    try:
        started = time.monotonic()
        deadline = started + JOB_TIMEOUT_S
        job_id = None
        while job_id is None or latest_step(run_dir) < 2:
            assert submitter.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, f"no step-2 checkpoint in {JOB_TIMEOUT_S} s:\n{''.join(lines)[-4000:]}"
            found = re.search(r"^submitted job (\S+) to ", "".join(lines), re.MULTILINE)
            job_id = found.group(1) if found else None
            time.sleep(0.2)
        print(f"step-2 checkpoint after {time.monotonic() - started:.0f} s")
        assert client.get_job_status(job_id) == JobStatus.RUNNING
        ray_job_id = client.get_job_info(job_id).driver_info.id
        actors = run_actors(head.dashboard_url, ray_job_id, state="ALIVE")
        assert {a.name.split("-")[0] + "-" for a in actors} == set(ACTOR_PREFIXES), [a.name for a in actors]
        titles = {f"ray::{a.class_name}" for a in actors}
        running = run_processes(head, titles)
        # On CPU each vLLM engine runs inside its rollout actor's process (rollout.engine_in_actor).
        assert any(p.split(" ", 1)[1].startswith("ray::RolloutEngine") for p in running), running
        assert any("-m cluster train" in p for p in running), running
        _stop_and_check(head, client, job_id, ray_job_id, titles, run_dir)
        assert submitter.wait(timeout=60) == 1
        reader.join(timeout=10)
        out = "".join(lines)
        assert f"job {job_id}: STOPPED" in out, out[-2000:]
        assert "step    1/200 |" in out, out[-2000:]  # the job's own output was streamed back
    finally:
        if submitter.poll() is None:
            submitter.kill()


def _stop_and_check(head, client, job_id: str, ray_job_id: str, titles: set[str], run_dir: Path) -> None:
    stop_sent = time.monotonic()
    assert client.stop_job(job_id)
    status = wait_for_status(client, job_id, {JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED}, 60)
    print(f"{status} {time.monotonic() - stop_sent:.1f} s after stop_job")
    assert status == JobStatus.STOPPED, job_log_tail(client, job_id)

    deadline = time.monotonic() + 30
    while (alive := run_actors(head.dashboard_url, state="ALIVE")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive, f"actors outlived `ray job stop`: {[a.name for a in alive]}"
    while (left := run_processes(head, titles)) and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"run actors and processes gone {time.monotonic() - stop_sent:.1f} s after stop_job")
    assert not left, f"processes outlived `ray job stop`: {left}"
    # SIGTERM must unwind the driver through Fleet.shutdown (ray.kill); Ray's own cleanup after the
    # driver is SIGKILLed would record "owner has died" instead.
    causes = {
        a.name: a.death_cause["actor_died_error_context"]["error_message"]
        for a in run_actors(head.dashboard_url, ray_job_id)
    }
    assert all("killed by `ray.kill`" in cause for cause in causes.values()), causes

    folders = [p for p in (run_dir / "checkpoints").glob("step-*") if not p.name.endswith(".tmp")]
    newest = max(folders, key=lambda p: int(p.name.removeprefix("step-")))
    missing = [name for name in CHECKPOINT_FILES if not (newest / name).is_file()]
    assert not missing, f"{newest} lacks {missing}"
    assert checkpoint.latest(run_dir) == newest
    assert checkpoint.load_driver_state(newest)["step"] == int(newest.name.removeprefix("step-"))
