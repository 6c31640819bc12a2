"""TinyZero's countdown task: combine the given numbers with + - * / into an equation that hits a target.

The gold ``answer`` is JSON, built with ``countdown_answer``: ``{"target": 24, "numbers": [1, 2, 3, 4]}``.
The model's equation is the last ``<answer>`` block, an expression only (``(4 + 2) * (3 + 1)``, no
``= 24``). It must use each given number exactly once (as a multiset), only integer literals, binary
+ - * / and parentheses (no unary minus, no concatenated digits beyond the given numbers), and equal
the target within 1e-6. It is evaluated with exact fractions by a small recursive-descent parser,
never ``eval``; dividing by zero scores as a wrong equation.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction

from rewards.tags import last_block

MAX_EQUATION_CHARS = 200
"""Longer equations score as wrong; this also bounds the parser's recursion depth."""

_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*/()]))")


def countdown_answer(target: int, numbers: list[int]) -> str:
    """The gold-answer string ``countdown_reward`` expects."""
    return json.dumps({"target": target, "numbers": numbers})


def countdown_reward(completion: str, answer: str, *, format_score: float = 0.0) -> float:
    """1.0 for a correct equation; ``format_score`` for an ``<answer>`` block that is not one; else 0.0."""
    spec = json.loads(answer)
    equation = last_block(completion, "answer")
    if equation is None:
        return 0.0
    value = _evaluate(equation, Counter(spec["numbers"]))
    return 1.0 if value is not None and abs(value - spec["target"]) <= 1e-6 else format_score


def _evaluate(equation: str, numbers: Counter[int]) -> Fraction | None:
    """The equation's value, or None when it is malformed, uses other numbers, or divides by zero."""
    tokens = _tokenize(equation) if len(equation) <= MAX_EQUATION_CHARS else None
    if tokens is None or Counter(int(tok) for tok in tokens if tok.isdigit()) != numbers:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expression()
    except (ValueError, ZeroDivisionError):
        return None
    return value if parser.at_end() else None


def _tokenize(equation: str) -> list[str] | None:
    tokens, pos, end = [], 0, len(equation.rstrip())
    while pos < end:
        match = _TOKEN.match(equation, pos)
        if match is None:
            return None
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    return tokens


class _Parser:
    """expression := term (('+' | '-') term)*;  term := factor (('*' | '/') factor)*;
    factor := integer | '(' expression ')'. Raises ValueError on anything else."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self._pos = 0

    def at_end(self) -> bool:
        return self._pos == len(self._tokens)

    def expression(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            value = value + self._term() if self._take() == "+" else value - self._term()
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            value = value * self._factor() if self._take() == "*" else value / self._factor()
        return value

    def _factor(self) -> Fraction:
        token = self._take()
        if token.isdigit():
            return Fraction(int(token))
        if token != "(":
            raise ValueError(f"unexpected {token!r}")
        value = self.expression()
        if self._take() != ")":
            raise ValueError("unclosed parenthesis")
        return value

    def _peek(self) -> str | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise ValueError("unexpected end of equation")
        self._pos += 1
        return token
