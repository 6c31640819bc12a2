"""``r1ray data``: write a dataset as the JSONL file that ``data.train`` / ``data.eval`` read.

Every row is ``{"id", "prompt", "answer", "task"}`` plus a worked ``solution`` and what the source tells
(``source``; countdown's ``numbers`` and ``target``; MATH's ``level`` and ``subject``), so the defaults
``data.prompt_key: prompt`` and ``data.answer_key: answer`` train on it::

    r1ray data countdown --out data/countdown.jsonl --n 10000 --numbers 4 --eval-n 256
    r1ray data gsm8k --out data/gsm8k.jsonl                    # openai/gsm8k, config main, split train
    r1ray data gsm8k --out data/gsm8k_test.jsonl --source ./gsm8k --split test
    r1ray data math --out data/math500.jsonl --source ./MATH-500 --split test --limit 200

``countdown`` (TinyZero's task, scored by the ``countdown`` reward) is generated here: each problem is
built from a random expression over its numbers, so every one is solvable, and that expression is its
``solution``. ``gsm8k`` and ``math`` are converted from a local file or folder laid out like the Hugging
Face dataset (Parquet or JSONL), or from a hub name through ``datasets.load_dataset``. A row that cannot
be used (a missing column, a gsm8k answer without ``####``, a MATH solution without ``\\boxed{}``) is
skipped, counted and named in the summary; a source with no usable row at all is a ``DataError``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from cluster.data.tasks import AdditionTask, read_rows
from cluster.errors import DataError
from rewards.countdown import countdown_answer

KINDS = ("countdown", "gsm8k", "math", "addition")
HUB_DEFAULTS = {"gsm8k": ("openai/gsm8k", "main"), "math": ("DigitalLearningGmbH/MATH-lighteval", "default")}
"""Hub dataset and config read when ``--source`` / ``--config`` are not given (MATH-lighteval is the
public copy of hendrycks/competition_math, which was taken down)."""
MAX_TARGET = 999
DRAWS_PER_ROW = 1000
"""Countdown draws allowed per wanted row before the options count as having too few distinct problems."""

_SUFFIXES = (".jsonl", ".parquet")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data {countdown,gsm8k,math} --out FILE [options]`` to the ``r1ray`` subcommands."""
    data = sub.add_parser("data", help="write a dataset (countdown, gsm8k, MATH) as r1ray JSONL")
    kinds = data.add_subparsers(dest="kind", required=True)

    countdown = kinds.add_parser("countdown", help="generate TinyZero's countdown problems, all solvable")
    countdown.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    countdown.add_argument("--n", type=_positive, default=1000, help="rows to write (default 1000)")
    countdown.add_argument("--seed", type=int, default=0, help="the same seed writes the same rows (default 0)")
    countdown.add_argument(
        "--numbers", type=int, choices=range(2, 7), default=3, metavar="K", help="2 to 6 (default 3)"
    )
    countdown.add_argument(
        "--max-number", type=_positive, default=99, metavar="M", help="numbers are 1..M (default 99)"
    )
    countdown.add_argument("--max-target", type=_positive, default=MAX_TARGET, metavar="T", help="targets are 1..T")
    countdown.add_argument("--eval-n", type=_positive, metavar="N", help="also write N held-out rows, none in --out")
    countdown.add_argument("--eval-out", metavar="FILE", help="held-out file (default: <out stem>.eval.jsonl)")

    addition = kinds.add_parser(
        "addition", help="the builtin task's worked solutions as SFT rows (a cold start for the builtin model)"
    )
    addition.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
    addition.add_argument("--n", type=_positive, default=300, help="rows to write (default 300)")
    addition.add_argument("--seed", type=int, default=0, help="data seed; held-out problems of that seed never appear")
    addition.add_argument("--digits", type=int, choices=range(1, 10), default=3, metavar="D", help="operand digits")
    addition.add_argument("--eval-size", type=_positive, default=200, help="the run's data.eval_size (held out)")

    world = kinds.add_parser(
        "r1-world", help="the miniature two-script world of `make demo-r1`: its data files and two pre-trained bases"
    )
    world.add_argument("--out", required=True, metavar="DIR", help="folder of the files, base/ and student/")
    world.add_argument("--seed", type=int, default=0, help="the same seed builds the same world (default 0)")
    world.add_argument("--steps", type=_positive, default=500, help="pre-training steps of the base (default 500)")
    world.add_argument(
        "--student-steps", type=_positive, default=400, help="pre-training steps of the 4x smaller student"
    )

    for kind, title in (("gsm8k", "GSM8K"), ("math", "MATH / MATH-500")):
        name, config = HUB_DEFAULTS[kind]
        convert = kinds.add_parser(kind, help=f"convert {title} from a local copy or the Hugging Face hub")
        convert.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write")
        convert.add_argument(
            "--source",
            metavar="PATH_OR_NAME",
            help=f"a .parquet/.jsonl file, a folder laid out like the hub dataset, or a hub name (default: {name})",
        )
        convert.add_argument(
            "--config",
            dest="dataset_config",
            metavar="NAME",
            help=f"hub config, or that sub-folder of a local source (default: {config})",
        )
        convert.add_argument("--split", default="train", help="hub split, or the local files named after it")
        convert.add_argument("--limit", type=_positive, metavar="N", help="write at most N rows")
    return data


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``r1ray data`` command and print its one-line summary."""
    if args.kind == "r1-world":
        from cluster.data.r1_world import WorldRecipe, build_world

        recipe = WorldRecipe(
            seed=args.seed,
            steps=args.steps,
            long_only_steps=int(args.steps * 0.7),
            student_steps=args.student_steps,
            student_long_only=int(args.student_steps * 0.7),
        )
        info = build_world(args.out, recipe)
        print(f"world: {args.out} ready ({info['seconds']:.0f} s to build)")
        return 0
    if args.kind == "addition":
        options = {"n": args.n, "seed": args.seed, "digits": args.digits, "eval_size": args.eval_size}
    elif args.kind == "countdown":
        options = {
            "n": args.n,
            "seed": args.seed,
            "numbers": args.numbers,
            "max_number": args.max_number,
            "max_target": args.max_target,
            "eval_n": args.eval_n,
            "eval_out": args.eval_out,
        }
    else:
        options = {"source": args.source, "config": args.dataset_config, "split": args.split, "limit": args.limit}
    print(summary_line(prepare(args.kind, Path(args.out), **options)))
    return 0


def prepare(kind: str, out: str | Path, **options) -> dict:
    """Write dataset ``kind`` to ``out`` (JSONL); return ``{"task", "path", "rows", "skipped", "skip_reasons"}``
    (first few reasons), plus ``eval_path`` and ``eval_rows`` for a countdown held-out file."""
    if kind == "countdown":
        return _countdown(Path(out), **options)
    if kind == "addition":
        return _addition(Path(out), **options)
    if kind in _CONVERTERS:
        return _convert(kind, Path(out), **options)
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")


def summary_line(summary: dict) -> str:
    """The line ``r1ray data`` prints: ``wrote 1000 rows to X (task countdown)``, plus held-out and skipped rows."""
    written = f"wrote {summary['rows']} rows to {summary['path']}"
    if "eval_path" in summary:
        written += f" and {summary['eval_rows']} held-out rows to {summary['eval_path']}"
    details = f"task {summary['task']}"
    if summary["skipped"]:
        details += f"; skipped {summary['skipped']} unusable rows, first: {summary['skip_reasons'][0]}"
    return f"{written} ({details})"


# ---- addition (the builtin task) ----------------------------------------------------------------------


def _addition(out: Path, *, n: int, seed: int = 0, digits: int = 3, eval_size: int = 200) -> dict:
    """``n`` distinct training problems of the builtin task (never one of the run's held-out problems, which
    ``seed`` and ``eval_size`` fix), each with its worked solution as the SFT ``response``."""
    task = AdditionTask(digits=digits, seed=seed, eval_size=eval_size)
    rng = random.Random(f"addition-sft-{seed}")
    rows, seen = [], set()
    if n > (9 * 10 ** (digits - 1)) ** 2 - eval_size:
        raise DataError(f"--n {n}: there are not that many {digits}-digit problems outside the held-out set")
    while len(rows) < n:
        ex = task.sample(rng)
        if ex.prompt in seen:
            continue
        seen.add(ex.prompt)
        rows.append(
            {
                "id": f"addition-{ex.id}",
                "prompt": ex.prompt,
                "answer": ex.answer,
                "task": "addition",
                "response": ex.solution,
            }
        )
    _write_jsonl(out, rows)
    return {"task": "addition", "path": str(out), "rows": len(rows), "skipped": 0, "skip_reasons": []}


# ---- countdown ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    value: Fraction
    text: str
    precedence: int


def _countdown(
    out: Path,
    *,
    n: int = 1000,
    seed: int = 0,
    numbers: int = 3,
    max_number: int = 99,
    max_target: int = MAX_TARGET,
    eval_n: int | None = None,
    eval_out: str | Path | None = None,
) -> dict:
    if min(n, max_number, max_target, eval_n or 1) < 1:
        raise DataError("countdown: n, eval_n, max_number and max_target must be at least 1")
    if not 2 <= numbers <= 6:
        raise DataError(f"countdown: numbers must be 2 to 6, got {numbers}")
    shape = {"count": numbers, "max_number": max_number, "max_target": max_target}
    summary = {"task": "countdown", "path": str(out), "rows": n, "skipped": 0, "skip_reasons": []}
    # The held-out set is drawn first from its own stream, so it does not change with --n.
    held_out: list[dict] = []
    eval_path = None
    if eval_n:
        held_out = _countdown_rows(random.Random(f"countdown-eval-{seed}"), eval_n, "eval", set(), **shape)
        eval_path = Path(eval_out) if eval_out else out.with_name(f"{out.stem}.eval.jsonl")
        summary |= {"eval_path": str(eval_path), "eval_rows": eval_n}
    train = _countdown_rows(random.Random(f"countdown-{seed}"), n, "train", {_key(r) for r in held_out}, **shape)
    _write_jsonl(out, train)
    if eval_path is not None:
        _write_jsonl(eval_path, held_out)
    return summary


def _countdown_rows(rng: random.Random, n: int, split: str, exclude: set, **shape) -> list[dict]:
    """``n`` distinct problems (numbers as a multiset, and target), none of them in ``exclude``."""
    rows, seen = [], set(exclude)
    for _ in range(n * DRAWS_PER_ROW):
        if len(rows) == n:
            break
        row = countdown_problem(rng, **shape)
        if row is not None and _key(row) not in seen:
            seen.add(_key(row))
            rows.append({"id": f"countdown-{split}-{len(rows)}", **row})
    if len(rows) < n:
        raise DataError(
            f"countdown: found only {len(rows)} of {n} distinct problems with {shape['count']} numbers up to "
            f"{shape['max_number']} and targets up to {shape['max_target']}; ask for fewer rows or widen the ranges"
        )
    return rows


def countdown_problem(rng: random.Random, *, count: int, max_number: int, max_target: int) -> dict | None:
    """One solvable problem as a row without its id, or None when this draw's target falls out of range.

    Two random terms are combined at a time by a random operation whose result is a positive integer,
    until one expression uses every number once; its value is the target."""
    numbers = [rng.randint(1, max_number) for _ in range(count)]
    terms = [_Term(Fraction(x), str(x), _ATOM) for x in numbers]
    while len(terms) > 1:
        left, right = terms.pop(rng.randrange(len(terms))), terms.pop(rng.randrange(len(terms)))
        big, small = (left, right) if left.value >= right.value else (right, left)
        choices = [("+", left, right), ("*", left, right)]
        if big.value != small.value:
            choices.append(("-", big, small))
        if (big.value / small.value).denominator == 1:
            choices.append(("/", big, small))
        terms.append(_combine(*rng.choice(choices)))
    target = terms[0].value
    if not 1 <= target <= max_target:
        return None
    return {
        "prompt": (
            f"Using the numbers {numbers}, create an equation that equals {target}. Use + - * / and each number once."
        ),
        "answer": countdown_answer(int(target), numbers),
        "task": "countdown",
        "numbers": numbers,
        "target": int(target),
        "solution": terms[0].text,
    }


def _combine(op: str, left: _Term, right: _Term) -> _Term:
    values = {"+": left.value + right.value, "-": left.value - right.value}
    values |= {"*": left.value * right.value, "/": left.value / right.value}
    precedence = _PRECEDENCE[op]
    # a - (b + c) and a / (b * c) keep their parentheses; a + (b - c) and a * (b / c) need none.
    right_needs = right.precedence < precedence or (right.precedence == precedence and op in "-/")
    left_text = f"({left.text})" if left.precedence < precedence else left.text
    right_text = f"({right.text})" if right_needs else right.text
    return _Term(values[op], f"{left_text} {op} {right_text}", precedence)


def _key(row: dict) -> tuple[tuple[int, ...], int]:
    return tuple(sorted(row["numbers"])), row["target"]


# ---- gsm8k and MATH -----------------------------------------------------------------------------------


class _Unusable(ValueError):
    """A source row that is skipped (and counted); the message says why."""


def gsm8k_row(row: object) -> dict:
    """GSM8K's ``question`` / ``answer`` (reasoning, then ``#### 1,234``) as an r1ray row without its id."""
    question, text = _texts(row, "question", "answer")
    reasoning, marker, final = text.rpartition("####")
    answer = final.replace(",", "").strip()
    if not marker or not answer:
        raise _Unusable("'answer' does not end with '#### <number>'")
    return {"prompt": question.strip(), "answer": answer, "task": "gsm8k", "solution": reasoning.strip()}


def math_row(row: object) -> dict:
    """A MATH / MATH-500 ``problem`` with its ``answer`` column, else the last ``\\boxed{}`` of its ``solution``."""
    (problem,) = _texts(row, "problem")
    solution = row.get("solution")
    solution = solution if isinstance(solution, str) else ""
    given = row.get("answer")
    answer = str(given).strip() if given is not None else ""
    if not answer:
        if not solution:
            raise _Unusable(f"no 'answer' or 'solution' column; it has {sorted(row)}")
        answer = (last_boxed(solution) or "").strip()
        if not answer:
            raise _Unusable("'solution' has no \\boxed{...} (and there is no 'answer' column)")
    converted = {"prompt": problem.strip(), "answer": answer, "task": "math", "solution": solution}
    if row.get("level") is not None:
        converted["level"] = row["level"]
    subject = row.get("type") or row.get("subject")
    if subject:
        converted["subject"] = subject
    return converted


def last_boxed(text: str) -> str | None:
    """The contents of the last complete ``\\boxed{...}`` or ``\\fbox{...}``, nested braces included
    (escaped ``\\{`` ``\\}`` do not count), or None."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, pos = 1, match.end()
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                pos += 2
                continue
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                return text[match.end() : pos]
            pos += 1
    return None


def _texts(row: object, *columns: str) -> list[str]:
    if not isinstance(row, dict):
        raise _Unusable(f"expected an object with {list(columns)}, got {type(row).__name__}")
    bad = [c for c in columns if not isinstance(row.get(c), str) or not row[c].strip()]
    if bad:
        raise _Unusable(f"missing or empty text column(s) {bad}; it has {sorted(row)}")
    return [row[c] for c in columns]


_CONVERTERS: dict[str, Callable[[object], dict]] = {"gsm8k": gsm8k_row, "math": math_row}


def _convert(
    kind: str,
    out: Path,
    *,
    source: str | None = None,
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> dict:
    default_source, default_config = HUB_DEFAULTS[kind]
    source = source or default_source
    config = default_config if config is None else config
    rows, skipped = [], []
    for index, (origin, where, raw) in enumerate(_source_rows(source, config, split)):
        if limit is not None and len(rows) == limit:
            break
        try:
            row = _CONVERTERS[kind](raw)
        except _Unusable as why:
            skipped.append(f"{where}: {why}")
            continue
        rows.append({"id": f"{kind}-{split}-{index}", **row, "source": origin})
    if not rows:
        found = f"all {len(skipped)} rows unusable, first: {skipped[0]}" if skipped else "it has no rows"
        raise DataError(f"data source {source} (split {split}): no usable rows ({found})")
    _write_jsonl(out, rows)
    return {"task": kind, "path": str(out), "rows": len(rows), "skipped": len(skipped), "skip_reasons": skipped[:5]}


def _source_rows(source: str, config: str, split: str) -> Iterator[tuple[str, str, object]]:
    """``(origin, where, row)`` for each row: the file or dataset, then that plus the line or row number."""
    path = Path(source).expanduser()
    if path.exists():
        for file in _local_files(path, config, split):
            for where, row in read_rows(str(file)):
                yield str(file), where, row
        return
    if not _HUB_NAME.fullmatch(source) or path.suffix in (*_SUFFIXES, ".json"):
        raise DataError(f"data source not found: {source} (give a local file or folder, or a Hugging Face dataset)")
    for number, row in enumerate(_hub_rows(source, config, split), start=1):
        yield source, f"{source} ({config or 'default'}/{split}), row {number}", row


def _local_files(path: Path, config: str, split: str) -> list[Path]:
    """The file itself; or, in a folder (its ``config`` sub-folder when there is one), the Parquet/JSONL
    files whose names contain ``split``, else all of them."""
    if path.is_file():
        if path.suffix not in _SUFFIXES:
            raise DataError(f"data source {path}: unsupported extension {path.suffix!r} (use .parquet or .jsonl)")
        return [path]
    if config and (path / config).is_dir():
        path = path / config
    files = sorted(f for f in path.rglob("*") if f.suffix in _SUFFIXES and f.is_file())
    if not files:
        raise DataError(f"data source {path}: no .parquet or .jsonl files in it")
    return [f for f in files if split in f.name] or files


def _hub_rows(name: str, config: str, split: str) -> Iterable[dict]:
    import datasets

    try:
        return datasets.load_dataset(name, config or None, split=split)
    except (OSError, ValueError) as err:  # not found, offline, unknown config or split
        first_line = next(iter(str(err).splitlines()), type(err).__name__)
        raise DataError(
            f"data source {name}: not a local path, and loading it from the hub failed: {first_line}"
        ) from None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Written beside the target and renamed, so a failed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    with partial.open("w", encoding="utf-8") as lines:
        for row in rows:
            lines.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)
