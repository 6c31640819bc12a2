"""Find ``<tag>...</tag>`` blocks in model output with linear-time string search (no regex backtracking)."""

from __future__ import annotations


def last_block(text: str, tag: str) -> str | None:
    """The content of the last complete ``<tag>...</tag>`` block, or None when there is none."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    start = text.rfind(f"<{tag}>", 0, close)
    if start < 0:
        return None
    return text[start + len(tag) + 2 : close]
