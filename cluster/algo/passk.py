"""Evaluation estimators as the R1 paper reports them: pass@1 over k samples, unbiased pass@k, cons@k."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: ``1 - C(n - c, k) / C(n, k)`` (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems; ``correct[i]`` holds problem i's samples."""
    if not correct:
        raise ValueError("no problems")
    return sum(pass_at_k(len(row), sum(map(bool, row)), k) for row in correct) / len(correct)


def majority_answer(answers: Sequence[str | None], same: Callable[[str, str], bool] | None = None) -> str | None:
    """The most frequent extracted answer (None answers do not vote); ties go to the first seen.

    ``same(a, b)`` groups answers that are equivalent without being equal strings (e.g. ``0.5`` and ``1/2``).
    """
    same = same or (lambda a, b: a == b)
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if same(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths
