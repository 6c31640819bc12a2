"""Every shipped reward scores right when called from a script with no main guard, its thread, or stdin.

The reward workers (``rewards.deadline``) are fresh interpreters that never import the caller's
``__main__``: the caller's body runs once, and math-verify answers instead of a crashed worker.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_anywhere.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.countdown import countdown_answer
from rewards.registry import REWARD_NAMES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "no_guard.py"
GOLD_24 = countdown_answer(24, [1, 2, 3, 4])
FORMATTED = "<think>half of one</think>\n<answer>\\frac{1}{2}</answer>"

# (reward name, completion, gold answer, expected score): a right and a wrong answer per shipped reward.
CASES = [
    ("accuracy", "<answer>\\frac{1}{2}</answer>", "0.5", 1.0),  # decided by math-verify in a worker
    ("accuracy", "so the answer is $\\sqrt{4}$.", "2", 1.0),
    ("accuracy", "<answer>\\frac{1}{3}</answer>", "0.5", 0.0),
    ("accuracy_tagged", FORMATTED, "0.5", 1.0),
    ("accuracy_tagged", "\\boxed{0.5}", "0.5", 0.0),
    ("format", FORMATTED, "", 1.0),
    ("format", "no tags", "", 0.0),
    ("format_think_opened", "half of one</think>\n<answer>1</answer>", "", 1.0),
    ("countdown", "<answer>(4 + 2) * (3 + 1)</answer>", GOLD_24, 1.0),
    ("countdown", "<answer>4 * 3 * 2 + 1</answer>", GOLD_24, 0.0),
    ("language", "<think>all of these words are english</think>", "", 1.0),
    ("exact", "<answer>12</answer>", "12", 1.0),
    ("exact", "<answer>13</answer>", "12", 0.0),
    ("harmless", "<think>fine</think><answer>12</answer>", "", 1.0),
    ("harmless", "<think>!</think><answer>12</answer>", "", 0.0),
]
LAUNCHES = {
    "script": [str(SCRIPT)],
    "module": ["-m", "tests.unit.scripts.no_guard"],
    "stdin": ["-"],  # a main module without a file, as in a notebook or a REPL
}


def run_no_guard(launch: str, mode: str) -> subprocess.CompletedProcess[str]:
    cases = json.dumps([case[:3] for case in CASES])
    return subprocess.run(
        [sys.executable, *LAUNCHES[launch], mode, cases],
        input=SCRIPT.read_text() if launch == "stdin" else None,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cases_cover_every_shipped_reward() -> None:
    assert {case[0] for case in CASES} == set(REWARD_NAMES)


@pytest.mark.parametrize("launch", list(LAUNCHES))
@pytest.mark.parametrize("mode", ["main", "thread"])
def test_no_guard_caller_runs_once_and_scores_right(launch: str, mode: str) -> None:
    result = run_no_guard(launch, mode)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("BODY") == 1, result.stdout
    report = json.loads(lines[-1])
    expected = [case[3] for case in CASES]
    assert report["scores"] == [expected] * (1 if mode == "main" else 2)
    # the worker never ran the caller's main module, so a function defined there is not found
    assert "could not unpickle the call" in report["local_function"]
