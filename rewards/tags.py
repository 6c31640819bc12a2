"""Find ``<tag>...</tag>`` blocks in model output with linear-time string search (no regex backtracking), and the
span of a completion a reward model judges."""

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


def judged_span(completion: str, span: str, think_opened: bool = False) -> str:
    """What a reward model judges: the final ``<answer>`` (else the text after ``</think>``, else all of it),
    the same with the chain of thought emptied out (``span == "final"``: ``<think></think><answer>...</answer>``,
    the answer in the form a language model judging by likelihood was trained on; without the opening tag when
    the prompt template opens the thought, ``think_opened``), or the whole response (``span == "response"``)."""
    if span == "response":
        return completion
    answer = last_block(completion, "answer")
    empty = "</think>" if think_opened else "<think></think>"
    if answer is None:
        _, closed, after = completion.rpartition("</think>")
        answer = after if closed else completion
        return f"{empty}{answer}" if span == "final" else answer
    return f"{empty}<answer>{answer}</answer>" if span == "final" else answer
