"""How a learner splits a batch into micro-batches: in batch order, or bucketed by length under a token budget.

A micro-batch is padded to its longest row, so a batch that mixes short and long completions (a base model
that mostly answers short and sometimes works the problem out) spends much of a batch-order forward on
padding. With a token budget the rows are sorted by length and cut greedily: each micro-batch holds at most
``max_rows`` rows and, unless one row alone exceeds it, at most ``max_tokens`` padded tokens (rows x its
longest row). The gradient is the same (each micro-batch's loss is scaled by its share of the mini-batch);
only the summation order changes.
"""

from __future__ import annotations

import numpy as np


def plan(lengths: np.ndarray, *, max_rows: int, max_tokens: int | None = None, group_rows: int = 1) -> list[np.ndarray]:
    """Row indices of each micro-batch. ``lengths``: (B,) tokens per row (prompt + response). Groups of
    ``group_rows`` consecutive rows (a preference pair) stay together, sorted by their longest row."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    n = len(lengths)
    if group_rows < 1 or n % group_rows:
        raise ValueError(f"{n} rows do not split into groups of {group_rows}")
    rows_per = max(group_rows, max_rows // group_rows * group_rows)
    if max_tokens is None:
        return [np.arange(i, min(i + rows_per, n)) for i in range(0, n, rows_per)]
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    group_len = np.asarray(lengths, dtype=np.int64).reshape(-1, group_rows).max(axis=1)
    order = np.argsort(group_len, kind="stable")
    out: list[np.ndarray] = []
    current: list[int] = []
    for g in order:
        # sorted ascending, so this group's length is the micro-batch's longest once it joins
        rows = (len(current) + 1) * group_rows
        if current and (rows > rows_per or rows * int(group_len[g]) > max_tokens):
            out.append(_rows(current, group_rows))
            current = []
        current.append(int(g))
    if current:
        out.append(_rows(current, group_rows))
    return out


def _rows(groups: list[int], group_rows: int) -> np.ndarray:
    return (np.asarray(groups)[:, None] * group_rows + np.arange(group_rows)[None]).reshape(-1)
