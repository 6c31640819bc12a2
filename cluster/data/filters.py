"""Rejection-sampling filters: what makes a sampled completion good enough to train on.

DeepSeek-R1 kept only correct samples and filtered out chains of thought with mixed languages,
long paragraphs and code blocks. Each filter here is a pure function of one completion; the sample
stage applies those the config turns on and counts how many completions each one rejects.
"""

from __future__ import annotations

import numpy as np

REPEAT_MIN_PERIOD = 8
REPEAT_MAX_PERIOD = 200
REPEAT_TIMES = 3


def has_repetition_loop(text: str, min_period: int = REPEAT_MIN_PERIOD, times: int = REPEAT_TIMES) -> bool:
    """True when some stretch of ``min_period`` to ``REPEAT_MAX_PERIOD`` characters appears ``times`` or more
    times back to back (``abcdefgh abcdefgh abcdefgh ``): the degenerate loop sampled models fall into.
    Linear in the text per period, vectorised: no regex backtracking."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    n = len(codes)
    for period in range(min_period, min(REPEAT_MAX_PERIOD, n // times) + 1):
        same = codes[period:] == codes[:-period]
        # `times` copies in a row means (times - 1) * period consecutive positions equal to the one a period on.
        need = (times - 1) * period
        if _longest_run(same) >= need:
            return True
    return False


def _longest_run(flags: np.ndarray) -> int:
    if not flags.any():
        return 0
    padded = np.concatenate([[0], flags.astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[::2]).max())


def has_code_fence(text: str) -> bool:
    return "```" in text or "~~~" in text


def longest_paragraph(text: str) -> int:
    """Characters of the longest paragraph (text between blank lines)."""
    return max((len(p.strip()) for p in text.replace("\r\n", "\n").split("\n\n")), default=0)
