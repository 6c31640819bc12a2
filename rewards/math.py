"""Accuracy reward for math: extract the model's final answer and check it against the gold answer.

The final answer is, in order of preference: the last complete ``<answer>...</answer>`` block (or the
last complete ``\\boxed{}`` inside it); the last complete ``\\boxed{...}`` / ``\\fbox{...}``; the rest of
the sentence after the last ``####`` or the last "answer is", whichever comes later (so a markdown
``#### Step 2`` heading before "the answer is 5" does not win); else whatever math-verify finds in the
text's last ``MAX_ANSWER_CHARS`` characters. With ``require_answer_tag=True`` only the ``<answer>`` block
counts (R1-Zero's rule: an answer left in ``<think>`` scores 0).

Equivalence is math-verify's (numbers, fractions, LaTeX, sets, intervals, equations, algebra), after a
cheap normalized string comparison. Decisions inherited from math-verify 0.9 and pinned by the tests:
``50\\%`` equals both ``0.5`` and ``50``; units, ``\\$`` and degree signs are dropped; ``x=2`` equals
``2``; decimals match to 6 significant digits (``0.3333333`` equals ``\\frac13``, ``0.333`` does not).
Plain-word gold answers (``yes``, ``Monday``) are compared as strings only, because math-verify reads a
word as a product of letter symbols, whose order does not matter.

math-verify runs in a worker process (``rewards.deadline``) so that a call returns within
``VERIFY_TIMEOUT_S`` plus a few milliseconds from any thread; ``9^{9^{9^{9}}}`` simply scores 0.
"""

from __future__ import annotations

import functools
import logging
import re

from rewards.deadline import DeadlineExecutor
from rewards.tags import last_block

MAX_ANSWER_CHARS = 2000
"""Longer extracted or gold answers score 0 unparsed: no legitimate final answer is this long."""
VERIFY_TIMEOUT_S = 4.0
"""Deadline for math-verify, including a worker (re)start (see ``warm_up``); every call ends within 5 s."""

logger = logging.getLogger(__name__)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"(?<!\\)[{}]")
_ANSWER_IS = re.compile(r"answer\s+is\b\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NOISE = re.compile(r"\s+|\$|\\left(?![a-z])|\\right(?![a-z])|\\[,;:! ]")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_COMMAND_ARGUMENT = re.compile(r"\\[A-Za-z]+\s*\{[^{}]*\}")  # \text{cm}, \begin{pmatrix}: not prose
_PLAIN_WORD = re.compile(r"[a-z]{2,}")
_TAG = re.compile(r"</?(?:think|answer)>")
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")


def accuracy_reward(completion: str, answer: str, *, require_answer_tag: bool = False) -> float:
    """1.0 when the completion's final answer equals the gold ``answer``, else 0.0; never raises or hangs."""
    answer = str(answer)  # datasets often store numeric answers as int
    pred = extract_answer(completion, require_answer_tag=require_answer_tag)
    anchored = pred is not None
    if pred is None:
        if require_answer_tag:
            return 0.0
        pred = _TAG.sub(" ", completion[-MAX_ANSWER_CHARS:])  # "...<answer>7" parses as 7 without the tag
    if not pred.strip() or not answer.strip() or max(len(pred), len(answer)) > MAX_ANSWER_CHARS:
        return 0.0
    gold_key = _normalize(answer)
    if _normalize(pred) == gold_key:
        return 1.0
    if _PLAIN_WORD.fullmatch(gold_key):
        return 0.0
    return _verify_with_deadline(pred, answer, anchored)


def extract_answer(completion: str, *, require_answer_tag: bool = False) -> str | None:
    """The final answer the completion commits to (order in the module docstring), or None."""
    tagged = last_block(completion, "answer")
    if tagged is not None:
        return _last_boxed(tagged) or tagged
    if require_answer_tag:
        return None
    return _last_boxed(completion) or _after_last_anchor(completion)


def _last_boxed(text: str) -> str | None:
    opening = [match.end() - 1 for match in _BOXED.finditer(text)]
    if not opening:
        return None
    closing = _matching_braces(text)
    for start in reversed(opening):
        if start in closing:
            return text[start + 1 : closing[start]]
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Map each unescaped '{' to its '}', in one pass (rescanning per ``\\boxed`` would be quadratic)."""
    closing: dict[int, int] = {}
    stack: list[int] = []
    for match in _BRACE.finditer(text):
        if match.group() == "{":
            stack.append(match.start())
        elif stack:
            closing[stack.pop()] = match.start()
    return closing


def _after_last_anchor(text: str) -> str | None:
    hashes = text.rfind("####")
    matches = list(_ANSWER_IS.finditer(text))
    said = matches[-1] if matches else None
    if said is not None and said.start() > hashes:
        rest = text[said.end() :]
    elif hashes >= 0:
        rest = text[hashes + 4 :]
    else:
        return None
    rest = rest.lstrip()
    end = _SENTENCE_END.search(rest)
    return rest[: end.start() if end else None].strip().strip("*").strip() or None


_SPACED_DIGITS = re.compile(r"(?<=\d)\s+(?=\d)")


def _normalize(answer: str) -> str:
    # Digits separated by white space are two numbers ("2 3" is not 23): keep a separator there.
    key = _NOISE.sub("", _TEXT_CMD.sub(r"\1", _SPACED_DIGITS.sub("|", answer)))
    return key.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".").lower()


def warm_up(workers: int = 1) -> None:
    """Start ``workers`` math-verify workers now, so that no scoring call pays their start-up.

    A scorer calls this once with the number of threads it scores from.
    """
    _EXECUTOR.warm_up(workers)


def _verify_with_deadline(pred: str, gold: str, anchored: bool) -> float:
    try:
        outcome = _EXECUTOR.run(_verify, pred, gold, anchored, timeout=VERIFY_TIMEOUT_S)
    except OSError:  # the OS refused a worker process; a missed reward beats a crashed rollout
        logger.warning("could not start a math-verify worker", exc_info=True)
        return 0.0
    return 1.0 if outcome.value is True else 0.0


def _prepare_worker() -> None:
    import math_verify  # noqa: F401  (pay the sympy import at worker start, not in the first call)


_EXECUTOR = DeadlineExecutor(initializer=_prepare_worker)


def _verify(pred: str, gold: str, anchored: bool) -> bool:
    """Runs in the worker: math-verify with its signal-based timeouts off (they need the main thread)."""
    from math_verify import verify

    # It warns once per process that its own timeout is off; ours is the worker's deadline.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold_parsed = _parse(gold, wrap=True)
    pred_parsed = _parse(pred, wrap=anchored)
    return bool(gold_parsed and pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None)


@functools.lru_cache(maxsize=64)  # GRPO scores a whole group of completions against one gold answer
def _parse(text: str, wrap: bool) -> list:
    """Parse an answer; a bare one (``\\frac12``, ``[1,2)``) parses only when wrapped in ``\\boxed{}``."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    attempts = [text]
    if wrap:
        boxed = "\\boxed{" + text + "}"
        # Wrapping prose would read its words as products of letters; prose goes to the extractor first.
        prose = any(d in text for d in _DELIMITERS) or _PROSE_WORD.search(_COMMAND_ARGUMENT.sub("", text))
        attempts = [text, boxed] if prose else [boxed, text]
    for attempt in attempts:
        parsed = parse(attempt, config, parsing_timeout=None)
        if parsed:
            return parsed
    return []
