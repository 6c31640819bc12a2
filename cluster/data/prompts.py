"""The run's prompts: the training stream and the held-out set, templated and tokenized."""

from __future__ import annotations

import numpy as np

from cluster.config import RunConfig
from cluster.data.tasks import BUILTIN_TASKS, AdditionTask, Example, PromptStream, load_examples
from cluster.errors import DataError
from cluster.payloads import TrainBatch


class Prompts:
    def __init__(self, cfg: RunConfig, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.template = cfg.data.template_text()
        self.max_len = cfg.model.max_prompt_len
        data = cfg.data
        if data.train in BUILTIN_TASKS:
            task = AdditionTask(digits=data.digits, seed=cfg.seed, eval_size=data.eval_size)
            self.train = PromptStream(None, task, cfg.seed)
            self.eval = task.eval_examples()
        elif data.train.startswith("builtin:"):
            raise DataError(f"data.train: unknown builtin task {data.train!r}; known: {list(BUILTIN_TASKS)}")
        else:
            rows = load_examples(data.train, data.prompt_key, data.answer_key)
            if data.eval:
                held_out = load_examples(data.eval, data.prompt_key, data.answer_key)
            else:  # hold out the tail of the training file
                cut = max(1, min(data.eval_size, len(rows) // 10))
                rows, held_out = rows[:-cut], rows[-cut:]
            self.train = PromptStream(rows, None, cfg.seed)
            self.eval = held_out[: data.eval_size]
            self.encode(rows)  # every prompt fits: fail now, not hours into the run
        self.eval_ids = self.encode(self.eval)

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
            ids = self.tokenizer(self.template.replace("{prompt}", ex.prompt))["input_ids"]
            if len(ids) > self.max_len:
                raise DataError(
                    f"prompt of {len(ids)} tokens exceeds model.max_prompt_len={self.max_len}: {ex.prompt[:80]!r}"
                )
            out.append(np.asarray(ids, dtype=np.int32))
        return out
