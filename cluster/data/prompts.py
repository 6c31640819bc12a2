"""The run's prompts: the training stream and the held-out set, templated and tokenized."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cluster.config import DataConfig, RunConfig
from cluster.data.tasks import BUILTIN_TASKS, AdditionTask, Example, PromptStream, load_examples
from cluster.errors import DataError
from cluster.payloads import TrainBatch
from rewards.registry import RowInfo


def load_problems(path: str, data: DataConfig) -> list[Example]:
    """A problem file's rows, each with its target language settled: its own column, else detected from the
    prompt (``data.language: auto``), else ``data.language``."""
    from rewards.language import detect_language

    rows = load_examples(path, data.prompt_key, data.answer_key, task_key=data.task_key, language_key=data.language_key)
    if data.language == "auto":
        return [ex if ex.language else replace(ex, language=detect_language(ex.prompt)) for ex in rows]
    return [ex if ex.language else replace(ex, language=data.language) for ex in rows]


def reward_info(examples: list[Example], data: DataConfig, repeat: int = 1) -> list[RowInfo]:
    """Each example's language and task for the reward scorers, ``repeat`` times in a row (one per sample)."""
    default = "en" if data.language == "auto" else data.language
    info = [RowInfo(language=ex.language or default, task=ex.task, prompt=ex.prompt) for ex in examples]
    return [row for row in info for _ in range(repeat)]


class PromptFormat:
    """How a question becomes the prompt the model sees: ``data.template`` around it, then tokens."""

    def __init__(self, cfg: RunConfig, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.template = cfg.data.template_text()

    def text(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def ids(self, prompt: str) -> list[int]:
        return self.tokenizer(self.text(prompt))["input_ids"]


class Prompts:
    def __init__(self, cfg: RunConfig, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.format = PromptFormat(cfg, tokenizer)
        self.max_len = cfg.model.max_prompt_len
        self.overlong = cfg.data.overlong
        self.skipped = 0
        """Overlong prompts left out (``data.overlong: skip``), training and held-out together."""
        data = cfg.data
        if data.train in BUILTIN_TASKS:
            task = AdditionTask(digits=data.digits, seed=cfg.seed, eval_size=data.eval_size)
            self.train = PromptStream(None, task, cfg.seed)
            self.eval = task.eval_examples()
        elif data.train.startswith("builtin:"):
            raise DataError(f"data.train: unknown builtin task {data.train!r}; known: {list(BUILTIN_TASKS)}")
        else:
            rows = load_problems(data.train, data)
            if data.eval:
                held_out = load_problems(data.eval, data)
            else:  # hold out the tail of the training file
                cut = max(1, min(data.eval_size, len(rows) // 10))
                rows, held_out = rows[:-cut], rows[-cut:]
            rows, held_out = self._fitting(rows, data.train), self._fitting(held_out, data.eval or data.train)
            self.train = PromptStream(rows, None, cfg.seed)
            self.eval = held_out[: data.eval_size]
        self.eval_ids = self.encode(self.eval)

    def _fitting(self, examples: list[Example], source: str) -> list[Example]:
        """The examples whose prompts fit ``model.max_prompt_len`` (all of them unless ``data.overlong: skip``);
        checked now for the whole file, not hours into the run."""
        lengths = [len(self._ids(ex)) for ex in examples]
        too_long = [i for i, n in enumerate(lengths) if n > self.max_len]
        if too_long and self.overlong == "error":
            first = too_long[0]
            raise DataError(
                f"{source}: {len(too_long)} prompt(s) longer than model.max_prompt_len={self.max_len} tokens, "
                f"the first ({lengths[first]} tokens): {examples[first].prompt[:80]!r}; "
                "raise model.max_prompt_len or set data.overlong: skip | truncate"
            )
        kept = examples
        if too_long and self.overlong == "skip":
            dropped = set(too_long)
            kept = [ex for i, ex in enumerate(examples) if i not in dropped]
            self.skipped += len(dropped)
            print(f"data: left out {len(dropped)} of {len(examples)} prompts of {source} (over {self.max_len} tokens)")
        if not kept:
            raise DataError(f"{source}: no prompt fits model.max_prompt_len={self.max_len} tokens")
        return kept

    def _ids(self, example: Example) -> list[int]:
        return self.format.ids(example.prompt)

    def probe_batch(self) -> TrainBatch:
        """Held-out prompts as sequences whose every token after the first is scored: a sync-check probe
        that needs no sampling."""
        ids = self.eval_ids[:8]
        width = max(len(x) for x in ids)
        return TrainBatch(
            input_ids=np.stack([np.pad(x, (0, width - len(x))) for x in ids]).astype(np.int64),
            prompt_lens=np.ones(len(ids), dtype=np.int64),
            response_lens=np.array([len(x) - 1 for x in ids], dtype=np.int64),
            advantages=np.zeros(len(ids), dtype=np.float32),
        )

    def encode(self, examples: list[Example]) -> list[np.ndarray]:
        out = []
        for ex in examples:
            ids = self._ids(ex)
            if len(ids) > self.max_len:
                if self.overlong != "truncate":
                    raise DataError(
                        f"prompt of {len(ids)} tokens exceeds model.max_prompt_len={self.max_len}: {ex.prompt[:80]!r}"
                    )
                ids = ids[-self.max_len :]  # the end holds the question and the assistant's turn
            out.append(np.asarray(ids, dtype=np.int32))
        return out
