"""Built-in tasks and dataset loading.

The built-in ``addition`` task is the embedded default: ``347+285=`` answered as
``<think>7+5+0=12;4+8+1=13;3+2+1=06</think><answer>632</answer>``, column by column with the carry,
so a small model has a chain of thought to get right (or, short: ``<think></think><answer>632</answer>``).
Held-out problems never appear in training. Real datasets are local JSONL / JSON / Parquet files;
every bad row is reported with its file and line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from cluster.errors import DataError
from rewards.language import LANGUAGE_SCRIPTS

BUILTIN_TASKS = ("builtin:addition",)


@dataclass(frozen=True, kw_only=True)
class Example:
    prompt: str
    answer: str
    id: str = ""
    """The row's ``id`` column (or its index in the file); names the problem in evaluation reports."""
    task: str = ""
    """The row's task (``data.task_key`` column); ``reward.only`` applies a reward to some tasks only."""
    language: str = ""
    """Target language of the chain of thought (``data.language_key`` column); empty: ``data.language``."""
    solution: str = ""
    """A worked ``<think>...</think><answer>...</answer>`` completion, for pre-training (builtin tasks)."""
    short_solution: str = ""
    """The same answer with an empty chain of thought, ``<think></think><answer>...</answer>``."""


def addition_example(a: int, b: int, digits: int) -> Example:
    steps, carry = [], 0
    xs, ys = str(a).zfill(digits)[::-1], str(b).zfill(digits)[::-1]
    for x, y in zip(xs, ys, strict=True):
        total = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    answer = str(a + b)
    return Example(
        id=f"{a}+{b}",
        prompt=f"{a}+{b}=",
        answer=answer,
        solution=f"<think>{';'.join(steps)}</think><answer>{answer}</answer>",
        short_solution=f"<think></think><answer>{answer}</answer>",
    )


class AdditionTask:
    """Random ``digits``-digit additions; the eval set is fixed by the seed and excluded from training."""

    def __init__(self, digits: int = 3, seed: int = 0, eval_size: int = 200) -> None:
        self.digits = digits
        self.low, self.high = 10 ** (digits - 1), 10**digits - 1
        rng = random.Random(f"eval-{seed}")
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < eval_size:
            pairs.add((rng.randint(self.low, self.high), rng.randint(self.low, self.high)))
        self.eval_pairs = sorted(pairs)
        self._held_out = pairs

    def eval_examples(self) -> list[Example]:
        return [addition_example(a, b, self.digits) for a, b in self.eval_pairs]

    def sample(self, rng: random.Random) -> Example:
        while True:
            pair = (rng.randint(self.low, self.high), rng.randint(self.low, self.high))
            if pair not in self._held_out:
                return addition_example(*pair, self.digits)


class PromptStream:
    """Endless, reproducible stream of training examples; its position is part of a checkpoint."""

    def __init__(self, examples: list[Example] | None, task: AdditionTask | None, seed: int) -> None:
        if not examples and task is None:
            raise DataError("the training dataset is empty")
        self.examples, self.task, self.seed = examples, task, seed
        self.position = 0

    def _example(self, index: int) -> Example:
        if self.task is not None:
            return self.task.sample(random.Random(f"{self.seed}-{index}"))
        epoch, offset = divmod(index, len(self.examples))
        order = list(range(len(self.examples)))
        random.Random(f"{self.seed}-epoch-{epoch}").shuffle(order)
        return self.examples[order[offset]]

    def take(self, n: int) -> list[Example]:
        batch = [self._example(self.position + i) for i in range(n)]
        self.position += n
        return batch


def read_rows(path: str):
    """``(where, row)`` for every row of a local JSONL/JSON/Parquet file, ``where`` naming the file and the
    1-based line (JSONL) or row (JSON, Parquet) for error messages. A missing file, an unknown extension,
    bad JSON and rows that are not objects are ``DataError``s."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file not found: {path}")
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    if file.suffix not in readers:
        raise DataError(f"data file {path}: unsupported extension {file.suffix!r} (use .jsonl, .json or .parquet)")
    unit = "line" if file.suffix == ".jsonl" else "row"
    for number, row in readers[file.suffix](file):
        where = f"data file {path}, {unit} {number}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object (a mapping of columns), got {type(row).__name__}")
        yield where, row


def load_examples(
    path: str, prompt_key: str, answer_key: str, *, task_key: str = "task", language_key: str = "language"
) -> list[Example]:
    """Problems of a local JSONL/JSON/Parquet file. Every problem (bad JSON, a missing or non-text column,
    no rows) is a ``DataError`` naming the file and the 1-based line (JSONL) or row (JSON, Parquet)."""
    examples = []
    for where, row in read_rows(path):
        missing = [k for k in (prompt_key, answer_key) if k not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing}; it has {sorted(row)}")
        prompt, answer = row[prompt_key], row[answer_key]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: {prompt_key!r} must be non-empty text, got {prompt!r:.60}")
        if answer is None or isinstance(answer, dict | list):
            raise DataError(f"{where}: {answer_key!r} must be text or a number, got {answer!r:.60}")
        extra = {name: row.get(key) for name, key in (("task", task_key), ("language", language_key))}
        for name, value in extra.items():
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: the {name} column must be text, got {value!r:.60}")
        if extra["language"] and extra["language"] not in LANGUAGE_SCRIPTS:
            raise DataError(f"{where}: unknown language {extra['language']!r}; known: {sorted(LANGUAGE_SCRIPTS)}")
        examples.append(
            Example(
                prompt=prompt,
                answer=str(answer),
                id=str(row.get("id", len(examples))),
                task=extra["task"] or "",
                language=extra["language"] or "",
            )
        )
    if not examples:
        raise DataError(f"data file {path} has no rows")
    return examples


def _jsonl_rows(file: Path):
    with file.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"data file {file}, line {number}: not valid JSON ({err.msg})") from None
        except UnicodeDecodeError as err:
            raise DataError(f"data file {file}: not UTF-8 text ({err.reason})") from None


def _json_rows(file: Path):
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"data file {file}, line {err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"data file {file}: not UTF-8 text ({err.reason})") from None
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):  # columns
        data = [dict(zip(data, values, strict=False)) for values in zip(*data.values(), strict=False)]
    if not isinstance(data, list):
        raise DataError(
            f"data file {file}: expected a list of rows (or a mapping of columns), got {type(data).__name__}"
        )
    yield from enumerate(data, start=1)


def _parquet_rows(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"data file {file}: not a readable Parquet file ({err})") from None
    yield from enumerate(table.to_pylist(), start=1)
