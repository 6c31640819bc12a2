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


def prompt_owners(input_ids: np.ndarray, prompt_lens: np.ndarray) -> np.ndarray | None:
    """Each row's index among the batch's distinct prompts (numbered in order of first appearance), or None
    when no two rows share a prompt."""
    index: dict[bytes, int] = {}
    owners = np.empty(len(prompt_lens), dtype=np.int64)
    for i, (ids, n) in enumerate(zip(input_ids, prompt_lens, strict=True)):
        owners[i] = index.setdefault(np.asarray(ids[: int(n)]).tobytes(), len(index))
    return None if len(index) == len(owners) else owners


def computed_tokens(
    micro: list[np.ndarray], prompt_lens: np.ndarray, response_lens: np.ndarray, owners: np.ndarray | None
) -> int:
    """Token positions a forward over these micro-batches computes, padding included: a micro-batch whose rows
    share prompts runs each distinct prompt once (padded to its longest) and each row's response tokens but
    the last (padded to the longest; at least one); one without, rows x its longest row."""
    total = 0
    for rows in micro:
        distinct = len(rows) if owners is None else np.unique(owners[rows]).size
        if distinct == len(rows):
            total += len(rows) * int((prompt_lens[rows] + response_lens[rows]).max())
        else:
            total += distinct * int(prompt_lens[rows].max()) + len(rows) * max(1, int(response_lens[rows].max()) - 1)
    return total


def plan_shared(
    prompt_lens: np.ndarray,
    response_lens: np.ndarray,
    owners: np.ndarray | None,
    *,
    max_rows: int,
    max_tokens: int | None = None,
    group_rows: int = 1,
) -> list[np.ndarray]:
    """``plan`` for a learner that runs each micro-batch's distinct prompts once (``owners``: each row's prompt,
    from ``prompt_owners``). Under a token budget, rows sorted by length scatter a prompt's rows (a GRPO
    group's G samples) over several micro-batches, each of which runs the prompt again; whole prompts per
    micro-batch run it once but pad short responses to long ones. Both plans obey the same budget; the one
    that computes fewer token positions wins."""
    lengths = prompt_lens + response_lens
    by_row = plan(lengths, max_rows=max_rows, max_tokens=max_tokens, group_rows=group_rows)
    if owners is None or max_tokens is None or group_rows != 1:
        return by_row
    counts = np.bincount(owners)
    if counts.min() != counts.max() or counts[0] > max_rows:
        return by_row  # prompts with unequal row counts, or more rows than a micro-batch holds
    order = np.argsort(owners, kind="stable")
    whole = plan(lengths[order], max_rows=max_rows, max_tokens=max_tokens, group_rows=int(counts[0]))
    by_prompt = [order[rows] for rows in whole]
    if any(len(rows) > 1 and len(rows) * lengths[rows].max() > max_tokens for rows in by_prompt):
        return by_row  # a whole group alone is over the budget
    cost = [computed_tokens(p, prompt_lens, response_lens, owners) for p in (by_row, by_prompt)]
    return by_prompt if cost[1] < cost[0] else by_row


def split_to(parts: list[np.ndarray], count: int, group_rows: int = 1) -> list[np.ndarray]:
    """``parts`` cut into ``count`` micro-batches: the one with the most rows is halved (at a group boundary)
    until there are ``count``. Data-parallel ranks whose plans differ in length must still make the same
    forward calls (FSDP2 all-gathers the weights in each)."""
    parts = list(parts)
    while len(parts) < count:
        i = max(range(len(parts)), key=lambda k: len(parts[k]))
        groups = len(parts[i]) // group_rows
        if groups < 2:
            raise ValueError(f"cannot cut {len(parts)} micro-batches of single groups into {count}")
        cut = groups // 2 * group_rows
        parts[i : i + 1] = [parts[i][:cut], parts[i][cut:]]
    return parts
