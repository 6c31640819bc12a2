"""Where a run's numbers go: metrics.jsonl, TensorBoard and Ray metrics (Prometheus, the dashboard).

Ray exports the gauges below with a ``ray_`` prefix (``ray_r1ray_reward_mean``), so they reach the
Ray dashboard's metrics view, Prometheus and the Grafana dashboard in ``deploy/grafana/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    def __init__(self, run_dir: Path, run_name: str, *, ray_metrics: bool = True, resume_step: int = 0) -> None:
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

    def close(self) -> None:
        self.tb.close()


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
