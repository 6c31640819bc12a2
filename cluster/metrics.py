"""Where a run's numbers go: metrics.jsonl, TensorBoard, Ray metrics (Prometheus), the terminal, plots.

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
        self.rows = [r for r in _read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tensorboard"))
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


def progress_line(row: dict[str, float], total_steps: int) -> str:
    return (
        f"step {int(row['step']):>4}/{total_steps} | reward {row['reward/mean']:.3f} | "
        f"acc {row['reward/accuracy']:.3f} | fmt {row.get('reward/format', float('nan')):.2f} | "
        f"len {row['response_length/mean']:.1f} | kl {row.get('kl', 0.0):.4f} | "
        f"sync {row['time/weight_sync_s']:.2f}s | lp-diff {row.get('rollout/logprob_diff_max', float('nan')):.1e} | "
        f"{row['time/step_s']:.1f}s"
    )


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path, evals: list[dict]) -> Path:
    """PNG curves of reward, accuracy, response length and KL (training steps plus held-out evals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_jsonl(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    steps = [r["step"] for r in rows]
    panels = [
        ("reward", ["reward/mean", "reward/format"]),
        ("accuracy", ["reward/accuracy"]),
        ("response_length", ["response_length/mean"]),
        ("kl", ["kl"]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for key in keys:
            ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=f"train {key}")
        if title == "accuracy" and evals:
            ax.plot([e["step"] for e in evals], [e["accuracy"] for e in evals], "o-", label="held-out pass@1 (sampled)")
            ax.plot([e["step"] for e in evals], [e["greedy_accuracy"] for e in evals], "s--", label="held-out greedy")
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    for ax, (title, _) in zip(axes.flat, panels, strict=True):
        extent = ax.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans.inverted())
        fig.savefig(out / f"{title}.png", bbox_inches=extent.expanded(1.05, 1.05), dpi=110)
    plt.close(fig)
    return path
