"""What a person watching a run sees: one console line per step, the before/after table, PNG curves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cluster.runtime.metrics import read_jsonl

if TYPE_CHECKING:
    from cluster.stages.evaluate import EvalResult


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
        ("long_share", "thinks (sampled)"),
        ("greedy_long_share", "thinks (greedy)"),
        ("response_length", "length (sampled)"),
        ("length_correct", "length if correct"),
        ("length_incorrect", "length if wrong"),
    ):
        print(f"{label:<20} {_cell(before.get(key))} {_cell(after.get(key))}")
    print(f"GRPO steps {summary['steps']}, wall {summary['wall_s']:.0f} s")
    print(f"run directory: {run_dir}   plots: {summary['plots']}", flush=True)


def _cell(value: float | None) -> str:
    if value is None:
        return f"{'-':>8}"
    return f"{value:>8.1f}" if abs(value) >= 2 else f"{value:>8.3f}"


def plot_run(run_dir: Path, evals: list[EvalResult]) -> Path:
    """PNG curves like the R1 paper's Figures 2 and 3: held-out accuracy (sampled and greedy), response
    length (train, and held-out correct / incorrect), chain-of-thought share, reward and KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    steps = [r["step"] for r in rows]
    at = [e.step for e in evals]

    def train(ax, key, label):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=label, alpha=0.6)

    def held_out(ax, field, label, style="o-"):
        values = [getattr(e, field) for e in evals]
        ax.plot(at, [float("nan") if v is None else v for v in values], style, label=label)

    panels = {
        "accuracy": lambda ax: (
            train(ax, "reward/accuracy", "train accuracy (sampled)"),
            held_out(ax, "accuracy", "held-out pass@1 (sampled)"),
            held_out(ax, "greedy_accuracy", "held-out greedy", "s--"),
        ),
        "response_length": lambda ax: (
            train(ax, "response_length/mean", "train mean"),
            held_out(ax, "response_length", "held-out mean", "d-"),
            held_out(ax, "length_correct", "held-out correct"),
            held_out(ax, "length_incorrect", "held-out incorrect", "x--"),
        ),
        "long_share": lambda ax: (
            train(ax, "response/long_share", "train"),
            held_out(ax, "long_share", "held-out sampled"),
            held_out(ax, "greedy_long_share", "held-out greedy", "s--"),
        ),
        "reward": lambda ax: (train(ax, "reward/mean", "reward"), train(ax, "reward/format", "format")),
        "kl": lambda ax: (train(ax, "kl", "k3 KL to the reference"), ax.set_yscale("log")),
    }
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), dpi=110)
    for ax, (title, draw) in zip(axes.flat, panels.items(), strict=False):
        draw(ax)
        ax.set_title(title.replace("_", " "))
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    fig.tight_layout()
    # Rendered once: each panel's PNG is its rectangle of the whole figure's pixels (a savefig per panel would
    # render all six panels again each time, ~0.8 s apiece here).
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    path = out / "curves.png"
    plt.imsave(path, pixels)
    height, width = pixels.shape[:2]
    renderer = fig.canvas.get_renderer()
    for ax, title in zip(axes.flat, panels, strict=False):
        box = ax.get_tightbbox(renderer).expanded(1.05, 1.05)  # display pixels, origin at the bottom left
        left, right = max(0, int(box.x0)), min(width, int(np.ceil(box.x1)))
        top, bottom = max(0, height - int(np.ceil(box.y1))), min(height, height - int(box.y0))
        plt.imsave(out / f"{title}.png", pixels[top:bottom, left:right])
    plt.close(fig)
    return path
