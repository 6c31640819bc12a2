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


def reward_info(examples: list[Example], data: DataConfig, repeat: int = 1, fmt=None) -> list[RowInfo]:
    """Each example's language, task and prompt (as the model saw it, through ``fmt``: what a reward model
    judges the completion after) for the reward scorers, ``repeat`` times in a row (one per sample)."""
    default = "en" if data.language == "auto" else data.language
    text = fmt.text if fmt is not None else (lambda prompt: prompt)
    info = [RowInfo(language=ex.language or default, task=ex.task, prompt=text(ex.prompt)) for ex in examples]
    return [row for row in info for _ in range(repeat)]


def overlong_action(cfg: RunConfig, where: str, prompt_len: int, response_len: int) -> str:
    """What to do with a training row of these lengths: ``fits``, ``skip`` or ``truncate`` (``data.overlong``);
    with ``data.overlong: error`` a row that does not fit is a ``DataError`` naming it."""
    max_prompt, max_response = cfg.model.max_prompt_len, cfg.model.max_response_len
    if prompt_len <= max_prompt and response_len <= max_response:
        return "fits"
    if cfg.data.overlong == "error":
        raise DataError(
            f"{where}: {prompt_len} prompt + {response_len} response tokens exceed model.max_prompt_len={max_prompt}"
            f" / max_response_len={max_response}; raise them or set data.overlong: skip | truncate"
        )
    return cfg.data.overlong


class PromptFormat:
    """How a question becomes the prompt the model sees: ``data.template`` around it (or the tokenizer's
    chat template, with ``template: chat``), then tokens."""

    def __init__(self, cfg: RunConfig, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chat = cfg.data.template == "chat"
        self.system = cfg.data.system_prompt
        self.template = None if self.chat else cfg.data.template_text()
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template: chat, but the model's tokenizer has no chat template")

    def text(self, prompt: str) -> str:
        if not self.chat:
            return self.template.replace("{prompt}", prompt)
        turns = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)

    def ids(self, prompt: str) -> list[int]:
        # A chat template writes the special tokens (BOS included) itself.
        if self.chat:
            return self.tokenizer(self.text(prompt), add_special_tokens=False)["input_ids"]
        return self.tokenizer(self.text(prompt))["input_ids"]


def check_think_opening(cfg: RunConfig, tokenizer) -> None:
    """The known trap of chat templates that open ``<think>`` themselves (R1-distill, Qwen3): the format
    reward must then score the completion as the rest of that thought, and the config must say so."""
    if cfg.data.template != "chat":
        return
    opens = PromptFormat(cfg, tokenizer).text("1+1=").rstrip().endswith("<think>")
    if opens != cfg.data.chat_opens_think:
        what = "opens <think> itself" if opens else "does not open <think>"
        raise DataError(
            f"data.chat_opens_think is {cfg.data.chat_opens_think}, but this model's chat template {what} at the "
            f"start of every answer; set data.chat_opens_think: {str(opens).lower()} so the format reward matches"
        )


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
