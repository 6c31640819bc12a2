"""The eval stage (``r1ray eval``): a model on a problem set, reported as the R1 paper reports it.

K samples per problem at ``eval.temperature`` / ``eval.top_p`` (top-p < 1 is fine here: nothing
trains on these samples) and one greedy completion, scored by the run's reward scorers. The report
(``<out>/report.json``) holds pass@1 (mean over each problem's K samples, then over problems),
unbiased pass@k for k = 1, 2, 4, ... K, cons@K (majority vote over the extracted ``<answer>``s, with
answers grouped by the accuracy reward's own equivalence, so ``0.5`` and ``1/2`` vote together under
``accuracy``), greedy accuracy, format rate, language consistency, lengths of correct and incorrect
samples, the truncation rate, and every sample of every problem.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cluster.algo.passk import majority_answer, mean_pass_at_k
from cluster.config import RunConfig, dump_config
from cluster.data.prompts import PromptFormat, load_problems, reward_info
from cluster.data.tasks import BUILTIN_TASKS, AdditionTask, Example
from cluster.errors import DataError
from cluster.payloads import SamplingSpec
from cluster.progress import reports_progress
from cluster.stages.common import resolve_model, write_json
from rewards.language import consistency_reward
from rewards.tags import last_block


def eval_problems(cfg: RunConfig) -> tuple[list[Example], str]:
    """The problems evaluated and where they come from."""
    source = cfg.eval.data or cfg.data.eval
    if source:
        examples = load_problems(source, cfg.data)
    elif cfg.data.train in BUILTIN_TASKS:
        examples = AdditionTask(digits=cfg.data.digits, seed=cfg.seed, eval_size=cfg.data.eval_size).eval_examples()
        source = f"{cfg.data.train} (held out)"
    else:
        raise DataError("eval.data: no problems to evaluate (give --data FILE, eval.data or data.eval)")
    return examples[: cfg.eval.size], source


def build_report(problems: list[dict], same_answer=None) -> dict:
    """The aggregate figures from the per-problem table (``problems[i]["samples"]``: text, extracted,
    correct, length, finish_reason, language; ``greedy``: the same for one greedy sample, or None).
    ``same_answer(problem_index, a, b)`` says whether two extracted answers are equivalent."""
    k = len(problems[0]["samples"])
    table = [[s["correct"] for s in p["samples"]] for p in problems]
    samples = [s for p in problems for s in p["samples"]]
    lengths = np.array([s["length"] for s in samples], dtype=np.float64)
    correct = np.array([s["correct"] for s in samples], dtype=bool)
    votes = []
    for i, p in enumerate(problems):
        answers = [s["extracted"] for s in p["samples"]]
        same = (lambda a, b, i=i: a == b or same_answer(i, a, b)) if same_answer else None
        top = majority_answer(answers, same)
        votes.append(top is not None and p["samples"][answers.index(top)]["correct"])
    greedy = [p["greedy"] for p in problems if p.get("greedy")]
    names = sorted({name for s in samples for name in s.get("components", {})})
    report = {
        "problems": len(problems),
        "samples_per_problem": k,
        "pass@1": mean_pass_at_k(table, 1),
        "pass@k": {str(n): mean_pass_at_k(table, n) for n in _powers_of_two(k)},
        f"cons@{k}": float(np.mean(votes)),
        "greedy_accuracy": float(np.mean([g["correct"] for g in greedy])) if greedy else None,
        "format_rate": float(np.mean([s["format"] for s in samples])),
        "language_consistency": float(np.mean([s["language"] for s in samples])),
        "length_mean": float(lengths.mean()),
        "length_correct": float(lengths[correct].mean()) if correct.any() else None,
        "length_incorrect": float(lengths[~correct].mean()) if (~correct).any() else None,
        "truncation_rate": float(np.mean([s["finish_reason"] == "length" for s in samples])),
        "components": {name: float(np.mean([s["components"][name] for s in samples])) for name in names},
    }
    tasks = sorted({p.get("task") or "" for p in problems})
    if len(tasks) > 1:  # each task's own figures (reward models and rules limited to a task score 0 elsewhere)
        report["by_task"] = {}
        for task in tasks:
            rows = [i for i, p in enumerate(problems) if (p.get("task") or "") == task]
            part = build_report(
                [problems[i] for i in rows], same_answer and (lambda i, a, b, rows=rows: same_answer(rows[i], a, b))
            )
            report["by_task"][task or "-"] = part
    return report


def _powers_of_two(n: int) -> list[int]:
    return [2**i for i in range(n.bit_length()) if 2**i <= n] + ([n] if n & (n - 1) else [])


@reports_progress("eval report")
def run_eval(cfg: RunConfig, out: Path | None = None, warm=None) -> dict:
    """``warm``: a ``runtime.warm_fleet.WarmFleet`` to take the fleet from (and leave it running), else the
    evaluation starts its own fleet and shuts it down."""
    from transformers import AutoTokenizer

    from cluster.data.prompts import check_think_opening
    from cluster.runtime.fleet import Fleet
    from cluster.runtime.ray_cluster import start_ray

    examples, source = eval_problems(cfg)
    # Nothing is moved aside: the report goes next to what is there (often the run that trained the model).
    out = Path(out) if out else cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval-config.yaml").write_text(dump_config(cfg))
    model = resolve_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=cfg.model.trust_remote_code)
    check_think_opening(cfg, tokenizer)
    fmt = PromptFormat(cfg, tokenizer)
    ids = [np.asarray(fmt.ids(ex.prompt), dtype=np.int32) for ex in examples]
    fitting = [i for i, x in enumerate(ids) if len(x) <= cfg.model.max_prompt_len]
    if not fitting:
        raise DataError(f"{source}: no prompt fits model.max_prompt_len={cfg.model.max_prompt_len} tokens")
    skipped = len(examples) - len(fitting)
    examples, ids = [examples[i] for i in fitting], [ids[i] for i in fitting]
    e = cfg.eval
    stop, max_tokens = tuple(cfg.rollout.stop), cfg.model.max_response_len
    sampled_spec = SamplingSpec(
        temperature=e.temperature, top_p=e.top_p, max_tokens=max_tokens, stop=stop, logprobs=False
    )
    greedy_spec = SamplingSpec(temperature=0.0, max_tokens=max_tokens, stop=stop, logprobs=False)
    print(f"eval: {len(examples)} problems from {source}, {e.samples} samples each ({skipped} prompts too long)")
    start_ray(cfg)
    began = time.perf_counter()
    fleet = warm.get(cfg, model) if warm is not None else Fleet(cfg, model, model, learners=False)
    try:
        k = e.samples
        sampled = fleet.generate(ids, k, sampled_spec, seed=f"eval/{cfg.seed}")
        answers = [ex.answer for ex in examples for _ in range(k)]
        sampled_scores = fleet.score(sampled.texts, answers, reward_info(examples, cfg.data, k, fmt))
        greedy = greedy_scores = None
        if e.greedy:
            greedy = fleet.generate(ids, 1, greedy_spec)
            greedy_scores = fleet.score(
                greedy.texts, [ex.answer for ex in examples], reward_info(examples, cfg.data, 1, fmt)
            )
        key = cfg.reward.accuracy_key

        def sample_row(rollouts, scores, row: int, language: str) -> dict:
            text = rollouts.texts[row]
            extracted = last_block(text, "answer")
            return {
                "text": text,
                "extracted": None if extracted is None else extracted.strip(),
                "correct": bool(scores.components[key][row] > 0.5),
                "length": int(rollouts.lengths[row]),
                "finish_reason": rollouts.finish_reasons[row],
                "format": float(scores.components["format"][row]) if "format" in scores.components else 0.0,
                "components": {name: float(values[row]) for name, values in scores.components.items()},
                "language": consistency_reward(text, language),
            }

        problems = []
        for i, ex in enumerate(examples):
            language = ex.language or (cfg.data.language if cfg.data.language != "auto" else "en")
            problems.append(
                {
                    "id": ex.id or str(i),
                    "prompt": ex.prompt,
                    "answer": ex.answer,
                    "task": ex.task,
                    "samples": [sample_row(sampled, sampled_scores, i * k + j, language) for j in range(k)],
                    "greedy": sample_row(greedy, greedy_scores, i, language) if greedy is not None else None,
                }
            )
        same = _equivalence(fleet, problems)
    finally:
        if warm is None:
            fleet.shutdown()
    report = build_report(problems, same)
    report |= {
        "model": cfg.model.path,
        "data": source,
        "prompts_skipped_too_long": skipped,
        "sampling": {"temperature": e.temperature, "top_p": e.top_p, "max_tokens": max_tokens, "stop": list(stop)},
        "accuracy_reward": key,
        "wall_s": time.perf_counter() - began,
    }
    write_json(out / "report.json", report | {"per_problem": problems})
    _print(report, out)
    return report


def _equivalence(fleet, problems: list[dict]):
    """``same(i, a, b)`` for problem i's distinct extracted answers, judged by the accuracy reward on the
    scorers (each answer taken as the gold of the other), in one batched call."""
    pairs: list[tuple[int, str, str]] = []
    for i, p in enumerate(problems):
        distinct = list(dict.fromkeys(s["extracted"] for s in p["samples"] if s["extracted"] is not None))
        pairs += [(i, a, b) for x, a in enumerate(distinct) for b in distinct[x + 1 :]]
    if not pairs:
        return lambda i, a, b: False
    key = fleet.cfg.reward.accuracy_key
    scores = fleet.score([f"<answer>{a}</answer>" for _, a, _ in pairs], [b for _, _, b in pairs])
    verdict = {(i, a, b): bool(v > 0.5) for (i, a, b), v in zip(pairs, scores.components[key], strict=True)}
    return lambda i, a, b: verdict.get((i, a, b), verdict.get((i, b, a), False))


def _print(report: dict, out: Path) -> None:
    k = report["samples_per_problem"]
    greedy = report["greedy_accuracy"]
    print(
        f"pass@1 {report['pass@1']:.3f} | cons@{k} {report[f'cons@{k}']:.3f} | "
        f"greedy {'-' if greedy is None else f'{greedy:.3f}'} | format {report['format_rate']:.3f} | "
        f"language {report['language_consistency']:.3f} | truncated {report['truncation_rate']:.3f}"
    )
    print("pass@k: " + "  ".join(f"{n}: {v:.3f}" for n, v in report["pass@k"].items()))
    print(f"report: {out / 'report.json'}", flush=True)
