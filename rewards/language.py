"""DeepSeek-R1's language-consistency reward: the share of the chain of thought's words in the target language.

The chain of thought is the text after ``<think>`` (or from the start, when the prompt opened the tag)
up to ``</think>`` (or the end). A word is a run of letters of one Unicode script; each CJK ideograph
or kana counts as a word, since those scripts do not separate words with spaces. A word counts for the
language when its script is one the language is written in (``LANGUAGE_SCRIPTS``), so English and
French are indistinguishable, which is enough to penalize the language mixing R1 saw.

Ignored: numbers, punctuation, math in ``$...$``, ``\\(...\\)`` and ``\\[...\\]``, LaTeX commands, and
single letters of alphabetic scripts (variables such as x or θ; also "a" and "I"). A thought with no
words left scores 0.0: an empty thought earns no consistency bonus.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Iterator

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"LATIN"}),
    "fr": frozenset({"LATIN"}),
    "de": frozenset({"LATIN"}),
    "es": frozenset({"LATIN"}),
    "zh": frozenset({"CJK"}),
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    "ko": frozenset({"HANGUL"}),
    "ru": frozenset({"CYRILLIC"}),
    "ar": frozenset({"ARABIC"}),
}
"""Unicode scripts (the first word of a letter's Unicode name) each language is written in."""

_SPACELESS_SCRIPTS = frozenset({"CJK", "HIRAGANA", "KATAKANA"})
_LETTER_RUN = re.compile(r"[^\W\d_]+")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


def consistency_reward(completion: str, language: str = "en") -> float:
    """Share in [0, 1] of the chain of thought's words written in ``language``'s scripts."""
    if language not in LANGUAGE_SCRIPTS:
        raise ValueError(f"unsupported language {language!r}; supported: {', '.join(sorted(LANGUAGE_SCRIPTS))}")
    scripts = list(_word_scripts(_without_math(chain_of_thought(completion))))
    if not scripts:
        return 0.0
    return sum(script in LANGUAGE_SCRIPTS[language] for script in scripts) / len(scripts)


def detect_language(text: str, default: str = "en") -> str:
    """The language of ``text``'s most common script (the first language written in it: Latin is English),
    or ``default`` when it has no words (numbers and symbols only)."""
    counts: dict[str, int] = {}
    for script in _word_scripts(_without_math(text)):
        counts[script] = counts.get(script, 0) + 1
    if not counts:
        return default
    top = max(counts, key=counts.get)
    return next((lang for lang, scripts in LANGUAGE_SCRIPTS.items() if top in scripts), default)


def chain_of_thought(completion: str) -> str:
    """The text inside ``<think>``; see the module docstring for a missing tag."""
    start = completion.find("<think>")
    start = 0 if start < 0 else start + len("<think>")
    end = completion.find("</think>", start)
    return completion[start : end if end >= 0 else None]


def _without_math(text: str) -> str:
    # Split-based rather than lazy regexes, which go quadratic on many unclosed delimiters.
    segments = text.replace("$$", "$").split("$")
    if len(segments) % 2 == 0:  # an odd number of '$': the last one opens no math
        segments[-2:] = [" ".join(segments[-2:])]
    text = _drop_between(" ".join(segments[::2]), "\\(", "\\)")
    return _LATEX_COMMAND.sub(" ", _drop_between(text, "\\[", "\\]"))


def _drop_between(text: str, opener: str, closer: str) -> str:
    head, *parts = text.split(opener)
    kept = [head]
    for part in parts:
        _, closed, rest = part.partition(closer)
        kept.append(rest if closed else part)
    return " ".join(kept)


def _word_scripts(text: str) -> Iterator[str]:
    """The script of each word in ``text``."""
    for run in _LETTER_RUN.findall(text):
        for script, letters in itertools.groupby(run, key=_script):
            count = len(list(letters))
            if script in _SPACELESS_SCRIPTS:
                yield from itertools.repeat(script, count)
            elif count > 1:
                yield script


def _script(char: str) -> str:
    # "CJK UNIFIED IDEOGRAPH-4E2D" -> "CJK"; "KATAKANA-HIRAGANA PROLONGED SOUND MARK" -> "KATAKANA".
    return unicodedata.name(char, "UNKNOWN").split(" ", 1)[0].split("-", 1)[0]
