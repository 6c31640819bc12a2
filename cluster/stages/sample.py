"""The sample stage (``r1ray sample``): DeepSeek-R1's rejection sampling, as an SFT set with provenance.

``sample.samples`` completions per prompt from the stage's model, scored by the reward scorers; a
completion is kept when it passes every filter the config turns on (finished within the length
bounds; correct; well-formed; language-consistent; no repetition loop, code fence or over-long
paragraph), at most ``sample.keep_per_prompt`` per prompt (shortest first, or at random). Rows of
``sample.mix`` (non-reasoning SFT data) are mixed in at ``sample.mix_ratio``. Writes
``<run_dir>/data.jsonl`` (``prompt``, ``response`` and the row's provenance: source model, stage,
sampling parameters, every reward component) and ``yield.json`` (kept / sampled, per filter). With
``sample.output: pairs`` the rows are preference pairs instead (``prompt``, ``chosen``, ``rejected``): a kept
completion against a wrong one of the same prompt, for a reward model trained on the policy's own samples.
Prompts go in chunks, each written to ``chunks/`` when done, so an interrupted stage resumes.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np

from cluster.config import RunConfig
from cluster.data.filters import has_code_fence, has_repetition_loop, longest_paragraph
from cluster.data.prompts import Prompts, reward_info
from cluster.data.tasks import Example, read_rows
from cluster.errors import DataError, Stopped
from cluster.payloads import Rollouts, SamplingSpec, Scores
from cluster.progress import track
from cluster.stages.common import open_run, write_json
from cluster.stages.stopping import STOP
from rewards.language import consistency_reward
from rewards.tags import judged_span

CHUNK_PROMPTS = 64
FILTERS = ("finished", "length", "correct", "format", "language", "repetition", "code_fence", "paragraph")


def failed_filters(cfg: RunConfig, text: str, tokens: int, finish: str, components: dict, language: str) -> list[str]:
    """The filters one completion fails (empty: keep it)."""
    s = cfg.sample
    failed = []
    if finish == "length":
        failed.append("finished")
    if tokens < s.min_tokens or (s.max_tokens is not None and tokens > s.max_tokens):
        failed.append("length")
    if s.require_correct and components[cfg.reward.accuracy_key] <= 0.5:
        failed.append("correct")
    if s.require_format and components["format"] < 1.0:
        failed.append("format")
    if s.min_language is not None and consistency_reward(text, language) < s.min_language:
        failed.append("language")
    if s.no_repetition and has_repetition_loop(text):
        failed.append("repetition")
    if s.no_code_fences and has_code_fence(text):
        failed.append("code_fence")
    if s.max_paragraph_chars is not None and longest_paragraph(text) > s.max_paragraph_chars:
        failed.append("paragraph")
    return failed


def select(cfg: RunConfig, examples: list[Example], rollouts: Rollouts, scores: Scores, seed: int) -> tuple[list, dict]:
    """The kept rows of one chunk and its yield counts."""
    k, s = rollouts.group_size, cfg.sample
    rng = random.Random(seed)
    counts = {"sampled": rollouts.num_completions, "passed": 0, "kept": 0, "prompts_with_kept": 0}
    counts |= {f"failed_{name}": 0 for name in FILTERS}
    kept = []
    for i, ex in enumerate(examples):
        language = ex.language or ("en" if cfg.data.language == "auto" else cfg.data.language)
        passing = []
        for row in range(i * k, (i + 1) * k):
            components = {name: float(v[row]) for name, v in scores.components.items()}
            text, tokens = rollouts.texts[row], int(rollouts.lengths[row])
            failed = failed_filters(cfg, text, tokens, rollouts.finish_reasons[row], components, language)
            for name in failed:
                counts[f"failed_{name}"] += 1
            if not failed:
                passing.append((tokens, row, components))
        counts["passed"] += len(passing)
        if s.prefer == "shortest":
            passing.sort(key=lambda item: (item[0], item[1]))
        else:
            rng.shuffle(passing)
        if s.output == "pairs":
            pairs = _pairs(
                cfg, ex, language, rollouts, scores, [row for _, row, _ in passing], range(i * k, (i + 1) * k)
            )
            counts["kept"] += len(pairs)
            counts["prompts_with_kept"] += bool(pairs)
            kept += pairs
            continue
        chosen = passing[: s.keep_per_prompt]
        counts["kept"] += len(chosen)
        counts["prompts_with_kept"] += bool(chosen)
        for tokens, row, components in chosen:
            kept.append(
                {
                    "id": ex.id,
                    "prompt": ex.prompt,
                    "response": rollouts.texts[row],
                    "answer": ex.answer,
                    "task": ex.task,
                    "language": language,
                    "length": tokens,
                    "rewards": components,
                    "reward": float(scores.total[row]),
                }
            )
    return kept, counts


def _pairs(cfg: RunConfig, ex: Example, language: str, rollouts: Rollouts, scores: Scores, passing, rows) -> list:
    """One prompt's preference pairs: distinct passing spans (in ``passing``'s order) against distinct spans the
    accuracy reward scores wrong (in sampling order), at most ``sample.keep_per_prompt``."""
    s, opened = cfg.sample, cfg.data.think_opened
    accuracy = scores.components[cfg.reward.accuracy_key]
    # chosen answers are right even where sample.require_correct is off
    right = (row for row in passing if accuracy[row] > 0.5)
    chosen = list(dict.fromkeys(judged_span(rollouts.texts[row], s.pair_span, opened) for row in right))
    good = set(chosen)
    # (an empty span is no pair, also where span `final` wraps an empty answer in tags)
    bare = "answer" if s.pair_span == "final" else s.pair_span
    wrong = (
        rollouts.texts[row] for row in rows if accuracy[row] <= 0.5 and judged_span(rollouts.texts[row], bare).strip()
    )
    spans = (judged_span(text, s.pair_span, opened) for text in wrong)
    rejected = [text for text in dict.fromkeys(spans) if text not in good]
    if not chosen:
        return []
    return [
        {
            "id": ex.id,
            "prompt": ex.prompt,
            "chosen": chosen[j % len(chosen)],
            "rejected": text,
            "answer": ex.answer,
            "task": ex.task,
            "language": language,
        }
        for j, text in enumerate(rejected[: s.keep_per_prompt])
    ]


def run_sample(cfg: RunConfig, resume: bool = False, warm=None) -> dict:
    """``warm``: a ``runtime.warm_fleet.WarmFleet`` to take the fleet from (and leave running), else the stage
    starts its own and shuts it down."""
    from cluster.runtime.fleet import Fleet
    from cluster.runtime.ray_cluster import start_ray

    start = open_run(cfg, resume)
    prompts = Prompts(cfg, start.tokenizer)
    examples = _prompts(cfg, prompts)
    s = cfg.sample
    spec = SamplingSpec(
        temperature=s.temperature,
        top_p=s.top_p,
        max_tokens=cfg.model.max_response_len,
        stop=tuple(cfg.rollout.stop),
        logprobs=False,
    )
    provenance = {
        "model": cfg.model.path,
        "stage": cfg.name,
        "sampling": {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "samples": s.samples,
            "max_tokens": spec.max_tokens,
        },
    }
    chunks = cfg.run_dir / "chunks"
    chunks.mkdir(exist_ok=True)
    print(f"sample: {len(examples)} prompts x {s.samples} samples from {cfg.model.path}", flush=True)
    start_ray(cfg)
    STOP.install(cfg.cluster.stop_grace_s)
    began = time.perf_counter()
    model = start.base_model
    fleet = warm.get(cfg, model) if warm is not None else Fleet(cfg, model, model, learners=False)
    try:
        for c, first in track(list(enumerate(range(0, len(examples), CHUNK_PROMPTS))), "sample", unit="chunks"):
            done = chunks / f"chunk-{c:05d}.json"
            if done.is_file():
                continue  # written by an interrupted run of this stage
            part = examples[first : first + CHUNK_PROMPTS]
            rollouts = fleet.generate(prompts.encode(part), s.samples, spec, seed=f"sample/{cfg.seed}/{c}")
            answers = [ex.answer for ex in part for _ in range(s.samples)]
            scores = fleet.score(rollouts.texts, answers, reward_info(part, cfg.data, s.samples, prompts.format))
            kept, counts = select(cfg, part, rollouts, scores, seed=cfg.seed * 100003 + c)
            write_json(done, {"rows": [r | {"source": provenance} for r in kept], "counts": counts})
            total = first + len(part)
            print(f"sample: {total}/{len(examples)} prompts, kept {counts['kept']}/{counts['sampled']}", flush=True)
            if STOP.requested and total < len(examples):
                STOP.done()
                raise Stopped(f"stopped after {total} of {len(examples)} prompts (SIGTERM)", str(cfg.run_dir))
    finally:
        if warm is None:
            fleet.shutdown()
    rows, counts = [], {}
    for path in sorted(chunks.glob("chunk-*.json")):
        chunk = json.loads(path.read_text())
        rows += chunk["rows"]
        for key, value in chunk["counts"].items():
            counts[key] = counts.get(key, 0) + value
    mixed = _mix(cfg, len(rows))
    out = rows + mixed
    random.Random(f"sample-{cfg.seed}").shuffle(out)
    data = cfg.run_dir / "data.jsonl"
    tmp = data.with_name("data.jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in out:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(data)
    yields = counts | {
        "prompts": len(examples),
        "yield": counts["kept"] / max(counts["sampled"], 1),
        "mixed_in": len(mixed),
        "rows": len(out),
    }
    write_json(cfg.run_dir / "yield.json", yields)
    summary = {
        "run": cfg.name,
        "kind": "sample",
        "data": str(data),
        "yield": yields,
        "wall_s": time.perf_counter() - began,
    }
    write_json(cfg.run_dir / "summary.json", summary)
    failed = ", ".join(f"{name} {counts[f'failed_{name}']}" for name in FILTERS if counts[f"failed_{name}"])
    print(
        f"sample done: kept {counts['kept']} {'pairs' if s.output == 'pairs' else 'samples'} of {counts['sampled']} "
        f"sampled ({yields['yield']:.1%}), "
        f"{counts['prompts_with_kept']}/{len(examples)} prompts; rejected by: {failed or 'none'}; "
        f"mixed in {len(mixed)}; wrote {len(out)} rows to {data}",
        flush=True,
    )
    return summary


def _prompts(cfg: RunConfig, prompts: Prompts) -> list[Example]:
    stream = prompts.train
    if stream.examples is None:
        if cfg.sample.prompts is None:
            raise DataError(f"sample.prompts: how many prompts to draw from {cfg.data.train} (a generated task)")
        return stream.take(cfg.sample.prompts)
    n = cfg.sample.prompts or len(stream.examples)
    return stream.examples[:n]


def _mix(cfg: RunConfig, kept: int) -> list[dict]:
    """``sample.mix`` rows making up ``sample.mix_ratio`` of the output (all of them if there are too few)."""
    s = cfg.sample
    if not s.mix or s.mix_ratio == 0:
        return []
    pool = []
    for where, row in read_rows(s.mix):
        for key in ("prompt", "chosen", "rejected") if s.output == "pairs" else ("prompt", "response"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise DataError(
                    f"{where}: sample.mix rows need non-empty text {key!r} (sample.output: {s.output}); "
                    f"it has {sorted(row)}"
                )
        pool.append(row | {"source": {"mix": s.mix}})
    want = int(round(kept * s.mix_ratio / (1 - s.mix_ratio)))
    if want > len(pool):
        print(f"sample: sample.mix has {len(pool)} rows, fewer than the {want} its ratio asks for; all are used")
    rng = np.random.default_rng(cfg.seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(want, len(pool)), replace=False))]
