"""The end of an evaluated pipeline's report: RL steps to a threshold, the R1 recipe's claims, a table, a PNG.

``finish_report`` adds to the pipeline report (``pipeline_report.json``):

- ``steps_to_threshold``: for each ``rl`` stage, the first step at which its periodic held-out
  evaluation (its ``summary.json``) reached the final accuracy of the first ``rl`` stage (R1-Zero's,
  in the R1 pipelines): how much RL a cold start saves;
- ``checks``: when the stages carry the names of ``deploy/pipelines/r1-demo.yaml``, each claim of the
  DeepSeek-R1 paper that the miniature should reproduce and whether it holds (the figures it compares are
  the stages' ``eval`` entries of the same report; a claim whose figures are missing does not hold);
- ``plot``: one PNG of every evaluated stage side by side, and the reward model's score against the
  true non-reasoning metric (reward hacking would show as the first rising while the second does not).
"""

from __future__ import annotations

import json
from pathlib import Path

METRICS = (
    "accuracy",
    "greedy_accuracy",
    "format_rate",
    "language_consistency",
    "non_reasoning_score",
    "reward_model_score",
    "harmful_rate",
    "response_length",
)


def _rl_evals(row: dict) -> list[dict]:
    path = Path(row.get("summary") or "")
    return json.loads(path.read_text()).get("evals", []) if path.is_file() else []


def steps_to(evals: list[dict], threshold: float) -> int | None:
    return next((int(e["step"]) for e in evals if e["accuracy"] >= threshold), None)


def finish_report(root: Path, result: dict) -> None:
    rows = result["stages"]
    rl = [r for r in rows if r["kind"] == "rl"]
    if rl:
        first = _rl_evals(rl[0])
        if first:
            threshold = first[-1]["accuracy"]
            result["steps_to_threshold"] = {
                "threshold": threshold,
                "of": rl[0]["name"],
                "stages": {r["name"]: steps_to(_rl_evals(r), threshold) for r in rl},
            }
    result["checks"] = r1_checks(result)
    result["plot"] = str(plot(root, rows))
    print_eval_table(result)


def r1_checks(result: dict) -> list[dict]:
    """The DeepSeek-R1 claims of ``make demo-r1`` (those whose stages are in the report)."""
    ev = {r["name"]: r.get("eval") or {} for r in result["stages"]}
    wall = {r["name"]: r.get("wall_s") for r in result["stages"]}
    steps = result.get("steps_to_threshold", {}).get("stages", {})
    checks: list[dict] = []

    def claim(text: str, needs: list[str], holds) -> None:
        if all(name in ev or name in steps for name in needs):
            try:
                ok = bool(holds())
            except (KeyError, TypeError):
                ok = False
            checks.append({"claim": text, "holds": ok})

    def get(name: str, key: str):
        return ev[name].get(key)

    claim(
        "r1_zero: accuracy at least 15 points above the base",
        ["base", "r1_zero"],
        lambda: get("r1_zero", "accuracy") >= get("base", "accuracy") + 0.15,
    )
    claim(
        "r1_zero: language consistency below 0.95 (mixing)",
        ["r1_zero"],
        lambda: get("r1_zero", "language_consistency") < 0.95,
    )
    claim(
        "reasoning_rl: reaches r1_zero's final accuracy in fewer RL steps",
        ["r1_zero", "reasoning_rl"],
        lambda: steps["reasoning_rl"] is not None and steps["reasoning_rl"] < steps["r1_zero"],
    )
    claim(
        "reasoning_rl: language consistency >= 0.95",
        ["reasoning_rl"],
        lambda: get("reasoning_rl", "language_consistency") >= 0.95,
    )
    claim(
        "reasoning_rl: accuracy within 5 points of r1_zero",
        ["r1_zero", "reasoning_rl"],
        lambda: get("reasoning_rl", "accuracy") >= get("r1_zero", "accuracy") - 0.05,
    )
    claim(
        "rs_sft: accuracy within 5 points of reasoning_rl",
        ["reasoning_rl", "rs_sft"],
        lambda: get("rs_sft", "accuracy") >= get("reasoning_rl", "accuracy") - 0.05,
    )
    claim(
        "rs_sft: non-reasoning score at least 5 points above reasoning_rl",
        ["reasoning_rl", "rs_sft"],
        lambda: get("rs_sft", "non_reasoning_score") >= get("reasoning_rl", "non_reasoning_score") + 0.05,
    )
    claim(
        "all_scenario_rl: reward-model score up from rs_sft",
        ["rs_sft", "all_scenario_rl"],
        lambda: get("all_scenario_rl", "reward_model_score") > get("rs_sft", "reward_model_score"),
    )
    claim(
        "all_scenario_rl: non-reasoning score up from rs_sft",
        ["rs_sft", "all_scenario_rl"],
        lambda: get("all_scenario_rl", "non_reasoning_score") > get("rs_sft", "non_reasoning_score"),
    )
    claim(
        "all_scenario_rl: harmful rate down from rs_sft",
        ["rs_sft", "all_scenario_rl"],
        lambda: get("all_scenario_rl", "harmful_rate") < get("rs_sft", "harmful_rate"),
    )
    claim(
        "all_scenario_rl: accuracy not more than 3 points below rs_sft",
        ["rs_sft", "all_scenario_rl"],
        lambda: get("all_scenario_rl", "accuracy") >= get("rs_sft", "accuracy") - 0.03,
    )
    claim(
        "distill: the student beats student_rl on reasoning accuracy",
        ["distill", "student_rl"],
        lambda: get("distill", "accuracy") > get("student_rl", "accuracy"),
    )
    claim("student_rl: trained at least as long (wall time) as distill", ["distill", "student_rl"],
          lambda: wall["student_rl"] >= wall["distill"])  # fmt: skip
    return checks


UNBOUNDED = frozenset({"response_length", "reward_model_score"})


def plot(root: Path, rows: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in rows if r.get("eval")]
    names = [r["name"] for r in evaluated]
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, metric in zip(axes.flat, METRICS, strict=False):
        values = [r["eval"].get(metric) for r in evaluated]
        ax.bar(range(len(names)), [0 if v is None else v for v in values], color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric)
        if metric not in UNBOUNDED:  # rates and accuracies; a reward model's score and a length have no scale
            ax.set_ylim(0, 1.05)
    ax = axes.flat[-1]
    points = [(r["eval"].get("non_reasoning_score"), r["eval"].get("reward_model_score"), r["name"]) for r in evaluated]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:orange")
    for x, y, name in points:
        ax.annotate(name, (x, y), fontsize=7)
    ax.set_xlabel("true non-reasoning metric (exact)")
    ax.set_ylabel("reward-model score")
    ax.set_title("reward model vs truth (hacking: RM up, truth flat)")
    fig.suptitle("r1ray demo-r1: every stage on the same held-out sets")
    fig.tight_layout()
    path = root / "pipeline_report.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def print_eval_table(result: dict) -> None:
    short = {"accuracy": "acc", "greedy_accuracy": "greedy", "format_rate": "format",
             "language_consistency": "lang", "non_reasoning_score": "general", "reward_model_score": "rm",
             "harmful_rate": "harm", "response_length": "len"}  # fmt: skip
    print("\nheld-out evaluation after each stage (accuracy: sampled pass@1 of the reasoning problems)")
    print(f"  {'stage':<18} {'wall s':>7} " + " ".join(f"{short[m]:>7}" for m in METRICS))
    for row in result["stages"]:
        if not row.get("eval"):
            continue
        values = [row["eval"].get(m) for m in METRICS]
        shown = " ".join(f"{'-':>7}" if v is None else f"{v:7.3f}" for v in values)
        wall = row.get("wall_s")
        print(f"  {row['name']:<18} {'-' if wall is None else f'{wall:.0f}':>7} {shown}")
    steps = result.get("steps_to_threshold")
    if steps:
        shown = ", ".join(f"{k} {'never' if v is None else v}" for k, v in steps["stages"].items())
        print(f"RL steps to {steps['of']}'s final accuracy {steps['threshold']:.3f}: {shown}")
    for check in result["checks"]:
        print(f"  [{'ok' if check['holds'] else 'NO'}] {check['claim']}")
