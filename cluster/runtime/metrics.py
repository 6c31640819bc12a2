"""Where a run's numbers go: metrics.jsonl, TensorBoard, Ray metrics (Prometheus, the dashboard) and wandb.

Ray exports the gauges below with a ``ray_`` prefix (``ray_r1ray_reward_mean``), so they reach the
Ray dashboard's metrics view, Prometheus and the Grafana dashboard in ``deploy/grafana/``. With
``logging.wandb`` set, every row also goes to Weights & Biases under its metrics.jsonl keys, with
the resolved config as the wandb run's config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from cluster.config import RunConfig, WandbConfig
from cluster.errors import DataError

# metrics.jsonl key -> Ray gauge name
RAY_GAUGES = {
    "reward/mean": "r1ray_reward_mean",
    "reward/accuracy": "r1ray_reward_accuracy",
    "reward/format": "r1ray_reward_format",
    "response_length/mean": "r1ray_response_length_mean",
    "kl": "r1ray_kl",
    "loss": "r1ray_loss",
    "time/step_s": "r1ray_step_seconds",
    "time/weight_sync_s": "r1ray_weight_sync_seconds",
    "throughput/tokens_per_s": "r1ray_rollout_tokens_per_second",
    "policy_version": "r1ray_policy_version",
}
TIMEOUT_COUNTER = "r1ray_reward_timeouts_total"


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        run_name: str,
        *,
        ray_metrics: bool = True,
        resume_step: int = 0,
        wandb: WandbConfig | None = None,
        config: dict | None = None,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        from torch.utils.tensorboard import SummaryWriter

        # On resume, events of the steps after the checkpoint (written before the interruption) are purged.
        self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        self.gauges, self.timeouts = {}, None
        if ray_metrics:
            from ray.util.metrics import Counter, Gauge

            tags = ("run",)
            self.gauges = {k: Gauge(name, description=k, tag_keys=tags) for k, name in RAY_GAUGES.items()}
            self.timeouts = Counter(TIMEOUT_COUNTER, description="reward calls that timed out", tag_keys=tags)
        self.tags = {"run": run_name}
        self.wandb = start_wandb(wandb, run_dir, run_name, config or {}) if wandb else None

    @classmethod
    def of_run(cls, cfg: RunConfig, *, resume_step: int = 0) -> MetricsLogger:
        """The logger of a stage's run directory, with the run's wandb settings and resolved config."""
        config = cfg.model_dump(mode="json")
        return cls(cfg.run_dir, cfg.name, resume_step=resume_step, wandb=cfg.logging.wandb, config=config)

    def log(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        step = int(row["step"])
        for key, value in row.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
                if key in self.gauges:
                    self.gauges[key].set(value, tags=self.tags)
        if self.timeouts is not None and row.get("reward/timeouts"):
            self.timeouts.inc(row["reward/timeouts"], tags=self.tags)
        self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if isinstance(v, int | float)}, step=step)

    def close(self) -> None:
        self.tb.close()
        if self.wandb is not None:
            import wandb

            self.wandb.finish()
            # finish() can return before wandb's service has written the run's file; teardown waits for it.
            wandb.teardown()


def start_wandb(settings: WandbConfig, run_dir: Path, run_name: str, config: dict):
    """A wandb run writing under ``<run_dir>/wandb``; ``offline`` needs no account and no network."""
    try:
        import wandb
    except ImportError:
        raise DataError("logging.wandb is set but wandb is not installed: pip install -e '.[wandb]'") from None
    # console="off": wandb leaves stdout alone, so the one-line-per-step console stays as it is.
    return wandb.init(
        project=settings.project,
        mode=settings.mode,
        dir=str(run_dir),
        name=run_name,
        config=config,
        settings=wandb.Settings(console="off", silent=True),
    )


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
