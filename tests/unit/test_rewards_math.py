"""accuracy_reward on realistic model outputs, human-labelled, plus adversarial inputs that must not hang.

Run: .venv/bin/python -m pytest tests/unit/test_rewards_math.py
"""

from __future__ import annotations

import threading
import time

import pytest

from rewards.math import accuracy_reward, extract_answer

THINK = "<think>Let me work through this step by step.</think>\n"

# (completion, gold answer, expected reward): one row per edge case.
ACCURACY_CASES = [
    # <answer> tag, plain numbers
    (THINK + "<answer>4</answer>", "4", 1.0),
    (THINK + "<answer>\n  4 \n</answer>", "4", 1.0),
    (THINK + "<answer>-5</answer>", "5", 0.0),
    # separate numbers are not one number
    (THINK + "<answer>2 3</answer>", "23", 0.0),
    (THINK + "<answer>2, 3</answer>", "23", 0.0),
    (THINK + "<answer>2\n3</answer>", "23", 0.0),
    (THINK + "<answer>\\frac{1}{2}</answer>", "\\frac 1 2", 1.0),
    (THINK + "<answer>12</answer>", "120", 0.0),
    (THINK + "<answer>120</answer>", "12", 0.0),
    (THINK + "<answer>3.14</answer>", "3.15", 0.0),
    (THINK + "<answer>1,000</answer>", "1000", 1.0),
    (THINK + "<answer>1000</answer>", "1,000", 1.0),
    (THINK + "<answer>The answer is 18.</answer>", "18", 1.0),
    (THINK + "<answer>18 dollars</answer>", "18", 1.0),
    (THINK + "<answer>\\boxed{18}</answer>", "18", 1.0),
    (THINK + "<answer>4</answer> <answer>5</answer>", "5", 1.0),
    (THINK + "<answer>4</answer> <answer>5</answer>", "4", 0.0),
    (THINK + "<answer></answer>", "4", 0.0),
    (THINK + "<answer>   </answer>", "4", 0.0),
    # fractions and decimals
    (THINK + "<answer>0.5</answer>", "\\frac{1}{2}", 1.0),
    (THINK + "<answer>\\frac{1}{2}</answer>", "0.5", 1.0),
    (THINK + "<answer>1/2</answer>", "\\frac{1}{2}", 1.0),
    (THINK + "<answer>\\dfrac{3}{4}</answer>", "\\frac{3}{4}", 1.0),
    (THINK + "<answer>$\\frac{3}{4}$</answer>", "0.75", 1.0),
    (THINK + "<answer>\\frac34</answer>", "\\frac{3}{4}", 1.0),
    (THINK + "<answer>\\frac{4}{3}</answer>", "\\frac{3}{4}", 0.0),
    (THINK + "<answer>0.3333333</answer>", "\\frac{1}{3}", 1.0),  # equal to 6 significant digits
    (THINK + "<answer>0.333</answer>", "\\frac{1}{3}", 0.0),
    (THINK + "<answer>0.7071</answer>", "\\frac{\\sqrt{2}}{2}", 0.0),
    (THINK + "<answer>\\frac{1}{\\sqrt{2}}</answer>", "\\frac{\\sqrt{2}}{2}", 1.0),
    (THINK + "<answer>\\sqrt{2}/2</answer>", "\\frac{\\sqrt{2}}{2}", 1.0),
    # percentages (math-verify accepts 50% as both 0.5 and 50) and money
    (THINK + "<answer>50\\%</answer>", "0.5", 1.0),
    (THINK + "<answer>50%</answer>", "50", 1.0),
    (THINK + "<answer>0.5</answer>", "50\\%", 1.0),
    (THINK + "<answer>5\\%</answer>", "50\\%", 0.0),
    (THINK + "<answer>\\$18</answer>", "18", 1.0),
    (THINK + "<answer>18</answer>", "\\$18", 1.0),
    (THINK + "<answer>\\$18.00</answer>", "18", 1.0),
    # units and degrees are dropped
    (THINK + "<answer>5 \\text{ cm}</answer>", "5", 1.0),
    (THINK + "<answer>10^{\\circ}</answer>", "10", 1.0),
    (THINK + "<answer>11 \\text{ cm}</answer>", "5", 0.0),
    # sets, tuples, intervals
    (THINK + "<answer>\\{1, 2\\}</answer>", "\\{2, 1\\}", 1.0),
    (THINK + "<answer>1, 2</answer>", "2, 1", 1.0),
    (THINK + "<answer>\\{1, 3\\}</answer>", "\\{1, 2\\}", 0.0),
    (THINK + "<answer>[1, 2)</answer>", "[1,2)", 1.0),
    (THINK + "<answer>(1, 2]</answer>", "[1,2)", 0.0),
    (THINK + "<answer>(-\\infty, 3]</answer>", "(-\\infty,3]", 1.0),
    (THINK + "<answer>(-\\infty, 3)</answer>", "(-\\infty,3]", 0.0),
    # equations and algebra
    (THINK + "<answer>x = 2</answer>", "2", 1.0),
    (THINK + "<answer>2</answer>", "x=2", 1.0),
    (THINK + "<answer>x = 3</answer>", "2", 0.0),
    (THINK + "<answer>2x+2</answer>", "2(x+1)", 1.0),
    (THINK + "<answer>x^2+2x+1</answer>", "(x+1)^2", 1.0),
    (THINK + "<answer>2x+1</answer>", "2(x+1)", 0.0),
    (THINK + "<answer>\\pi \\cdot 2</answer>", "2\\pi", 1.0),
    (THINK + "<answer>3\\sqrt{2}</answer>", "\\sqrt{18}", 1.0),
    (THINK + "<answer>f(x) = 2x + 1</answer>", "2x+1", 1.0),
    (THINK + "<answer>x=2, y=3</answer>", "(2,3)", 1.0),
    (THINK + "<answer>(1,2)</answer>", "(2,1)", 0.0),  # ordered pairs
    (THINK + "<answer>5, 7</answer>", "7", 0.0),
    (THINK + "<answer>1e3</answer>", "1000", 0.0),  # a known miss: math-verify does not read e-notation
    (THINK + "<answer>\\pi</answer>", "3.14159", 0.0),  # a rounded gold does not match pi itself
    # multiple choice and words
    (THINK + "<answer>(B)</answer>", "B", 1.0),
    (THINK + "<answer>\\text{(B)}</answer>", "B", 1.0),
    (THINK + "<answer>C</answer>", "B", 0.0),
    (THINK + "<answer>Yes</answer>", "yes", 1.0),
    (THINK + "<answer>no</answer>", "yes", 0.0),
    (THINK + "<answer>\\text{Monday}</answer>", "Monday", 1.0),
    (THINK + "<answer>Mondya</answer>", "Monday", 0.0),  # math-verify alone calls this a match
    # \boxed
    ("So the answer is $\\boxed{42}$.", "42", 1.0),
    ("First \\boxed{41}. Wait, I made an error. Final: \\boxed{42}", "42", 1.0),
    ("First \\boxed{42}. Wait, I made an error. Final: \\boxed{41}", "42", 0.0),
    ("Hence \\boxed {7}.", "7", 1.0),
    ("Hence \\fbox{7}.", "7", 1.0),
    ("The last one is cut off: \\boxed{3} then \\boxed{4", "3", 1.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}2", 1.0),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", 1.0),
    ("\\boxed{x=3}", "3", 1.0),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    ("\\boxed{\\left( 3, \\frac{\\pi}{3} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 0.0),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", 1.0),
    ("\\boxed{\\text{(A)}}", "A", 1.0),
    # GSM8K '####'
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether 48+24 = 72.\n#### 72", "72", 1.0),
    ("48+24 = 72\n#### 72\n", "72", 1.0),
    ("#### 7.2", "72", 0.0),
    ("#### $1,080", "1080", 1.0),
    # "the answer is"
    ("Thus, the answer is 7.", "7", 1.0),
    ("The final answer is $\\frac{3}{5}$. I hope it is correct.", "\\frac{3}{5}", 1.0),
    ("The answer is: 7", "7", 1.0),
    ("The answer is **7**.", "7", 1.0),
    ("I think the answer is 6.\nWait, no: the answer is 7.", "7", 1.0),
    ("I think the answer is 7.\nWait, no: the answer is 6.", "7", 0.0),
    ("#### Step 1\nAdd 3 and 4.\nThe answer is 7.", "7", 1.0),
    ("the answer is 3.5.", "3.5", 1.0),
    # no anchor: math-verify searches the end of the text
    ("We add them: 3+4 = 7", "7", 1.0),
    ("**Final Answer**: 7", "7", 1.0),
    ("The result is $7$", "7", 1.0),
    ("I give up.", "7", 0.0),
    ("", "7", 0.0),
    (THINK + "<answer>7", "7", 1.0),  # an unclosed tag falls back to the text
    # bad gold answers
    (THINK + "<answer>7</answer>", "", 0.0),
    (THINK + "<answer>7</answer>", "   ", 0.0),
]


@pytest.mark.parametrize(("completion", "answer", "expected"), ACCURACY_CASES)
def test_accuracy(completion: str, answer: str, expected: float) -> None:
    assert accuracy_reward(completion, answer) == expected


# (completion, gold, expected with require_answer_tag=True, expected without)
TAGGED_CASES = [
    ("<think>So the answer is 7.</think>", "7", 0.0, 1.0),
    ("<think>\\boxed{7}</think><answer>8</answer>", "7", 0.0, 0.0),
    ("<think>\\boxed{8}</think><answer>7</answer>", "7", 1.0, 1.0),
    ("<think>hmm</think><answer>7</answer>", "7", 1.0, 1.0),
    ("<answer>\\boxed{7}</answer>", "7", 1.0, 1.0),
    ("\\boxed{7}", "7", 0.0, 1.0),
    ("<think>hmm</think><answer>7", "7", 0.0, 1.0),
    ("<think><answer>7</answer> no wait</think><answer>8</answer>", "7", 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "answer", "tagged", "untagged"), TAGGED_CASES)
def test_require_answer_tag(completion: str, answer: str, tagged: float, untagged: float) -> None:
    assert accuracy_reward(completion, answer, require_answer_tag=True) == tagged
    assert accuracy_reward(completion, answer) == untagged


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<answer> 12 </answer>", " 12 "),
        ("<answer>so \\boxed{12}</answer>", "12"),
        ("\\boxed{\\frac{1}{2}} and \\boxed{3", "\\frac{1}{2}"),
        ("The answer is **7**. Done.", "7"),
        ("#### 72\nThe end", "72"),
        ("no anchor at all 7", None),
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


def test_numeric_gold_is_accepted() -> None:
    assert accuracy_reward("<answer>7</answer>", 7) == 1.0  # type: ignore[arg-type]


HANGS_WITHOUT_DEADLINE = "\\boxed{9^{9^{9^{9}}}}"
ADVERSARIAL_CASES = [
    ("9**9**9**9", "1"),
    (HANGS_WITHOUT_DEADLINE, "1"),
    ("<answer>9^{9^{9^{9}}}</answer>", "1"),
    ("<answer>10^{10^{10}}</answer>", "1"),
    ("<answer>\\frac{1}{0}</answer>", "0"),
    ("\\boxed{\\frac{1}{0}}", "1"),
    ("x" * 100_000, "1"),
    ("7 " * 50_000, "1"),
    ("<answer>" + "9" * 100_000 + "</answer>", "1"),
    ("{" * 500 + "1" + "}" * 500, "2"),
    ("(" * 500 + "1" + ")" * 500, "2"),
    ("\\boxed{" * 500 + "1" + "}" * 500, "2"),
    ("<answer>" + "\\sqrt{" * 300 + "2" + "}" * 300 + "</answer>", "2"),
    ("\\boxed{" * 14_000, "1"),
    ("answer is " * 10_000, "1"),
    ("####" * 25_000, "1"),
    ("$" * 100_000, "1"),
    ("\x00" * 1000, "1"),
    ("<answer>\ud800</answer>", "1"),  # a lone surrogate
    ("<answer>" * 50_000, "1"),
    ("</answer>" * 50_000, "1"),
    ("<answer>\\boxed{}</answer>", "1"),
]


@pytest.fixture
def short_deadline(monkeypatch):
    """The verifier's deadline at 1 s instead of 4 s: the same kill, a quarter of the wait."""
    import rewards.math

    monkeypatch.setattr(rewards.math, "VERIFY_TIMEOUT_S", 1.0)
    return 1.0


@pytest.mark.parametrize(("completion", "answer"), ADVERSARIAL_CASES, ids=range(len(ADVERSARIAL_CASES)))
def test_adversarial_scores_zero_fast(completion: str, answer: str, short_deadline: float) -> None:
    start = time.monotonic()
    assert accuracy_reward(completion, answer) == 0.0
    assert time.monotonic() - start < short_deadline + 2.0


def test_adversarial_from_threads_does_not_block_other_threads() -> None:
    """A hanging check in one thread neither blocks nor breaks a normal check in another."""
    results: dict[str, tuple[float, float]] = {}

    def score(key: str, completion: str, answer: str) -> None:
        start = time.monotonic()
        results[key] = (accuracy_reward(completion, answer), time.monotonic() - start)

    threads = [
        threading.Thread(target=score, args=("hang", HANGS_WITHOUT_DEADLINE, "1")),
        threading.Thread(target=score, args=("huge", "x" * 100_000, "1")),
        threading.Thread(target=score, args=("normal", "<answer>0.5</answer>", "\\frac{1}{2}")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    # (the full deadline: a check that waits for a free worker behind the hanging one spends it waiting)
    assert results["hang"][0] == 0.0 and results["hang"][1] < 5.0
    assert results["huge"][0] == 0.0 and results["huge"][1] < 5.0
    assert results["normal"][0] == 1.0 and results["normal"][1] < 5.0
