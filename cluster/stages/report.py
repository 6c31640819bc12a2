"""What a person watching a run sees: one console line per step, the before/after table, PNG curves."""

from __future__ import annotations

from pathlib import Path

from cluster.runtime.metrics import read_jsonl


def progress_line(row: dict[str, float], total_steps: int) -> str:
    return (
        f"step {int(row['step']):>4}/{total_steps} | reward {row['reward/mean']:.3f} | "
        f"acc {row['reward/accuracy']:.3f} | fmt {row.get('reward/format', float('nan')):.2f} | "
        f"len {row['response_length/mean']:.1f} | kl {row.get('kl', 0.0):.4f} | "
        f"sync {row['time/weight_sync_s']:.2f}s | lp-diff {row.get('rollout/logprob_diff_max', float('nan')):.1e} | "
        f"{row['time/step_s']:.1f}s"
    )


def print_table(run_dir: Path, summary: dict) -> None:
    before, after = summary["eval_before"], summary["eval_after"]
    print("\n                      before    after")
    for key, label in (
        ("accuracy", "pass@1 (sampled)"),
        ("greedy_accuracy", "greedy accuracy"),
        ("format_rate", "format rate"),
    ):
        print(f"{label:<20} {before[key]:>8.3f} {after[key]:>8.3f}")
    print(f"GRPO steps {summary['steps']}, wall {summary['wall_s']:.0f} s")
    print(f"run directory: {run_dir}   plots: {summary['plots']}", flush=True)


def plot_run(run_dir: Path, evals: list[dict]) -> Path:
    """PNG curves of reward, accuracy, response length and KL (training steps plus held-out evals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "metrics.jsonl")
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
            ax.plot([e.step for e in evals], [e.accuracy for e in evals], "o-", label="held-out pass@1 (sampled)")
            ax.plot([e.step for e in evals], [e.greedy_accuracy for e in evals], "s--", label="held-out greedy")
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
