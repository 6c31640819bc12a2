"""Progress lines: how often they come, what they say about the time left, and silence for short work."""

from __future__ import annotations

import time

import pytest

from cluster.progress import Progress, duration, heartbeat, reports_progress, track


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_few_seconds_with_the_time_left_at_the_current_rate():
    clock, lines = Clock(), []
    progress = Progress("sft", 10, every_s=5.0, clock=clock, write=lines.append)
    for _ in range(10):
        clock.now += 2.0  # 2 s per step
        progress.advance()
    # lines after steps 3 (6 s), 6 (12 s) and 9 (18 s); none once all are done
    assert lines == [
        "sft: 3/10 steps (30%), 0.50 steps/s, 6 s elapsed, ~14 s left",
        "sft: 6/10 steps (60%), 0.50 steps/s, 12 s elapsed, ~8 s left",
        "sft: 9/10 steps (90%), 0.50 steps/s, 18 s elapsed, ~2 s left",
    ]


def test_a_resumed_loop_counts_the_steps_done_before():
    clock, lines = Clock(), []
    progress = Progress("rm", 5, already=95, every_s=1.0, clock=clock, write=lines.append)
    clock.now += 60.0
    progress.advance()
    assert lines == ["rm: 96/100 steps (96%), 0.02 steps/s, 60 s elapsed, ~4.0 min left"]


def test_short_work_prints_nothing(capsys):
    assert list(track(range(50), "quick")) == list(range(50))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("seconds", "shown"), [(0.4, "0 s"), (89, "89 s"), (150, "2.5 min"), (7200, "2.0 h")])
def test_duration(seconds, shown):
    assert duration(seconds) == shown


def test_bad_total_is_refused():
    with pytest.raises(ValueError, match=r"Progress\('x'\): total \(-1\)"):
        Progress("x", -1)


def test_heartbeat_estimates_from_the_previous_call():
    lines: list[str] = []
    label = "eval-test"
    with heartbeat(label, every_s=0.05, write=lines.append):
        time.sleep(0.3)
    assert lines and all(line.startswith(f"{label}: ") and "left" not in line for line in lines)
    lines.clear()
    with heartbeat(label, every_s=0.05, write=lines.append):
        time.sleep(0.12)
    assert lines and "left (the last one took 0 s)" in lines[0], lines


def test_reports_progress_keeps_the_result_and_the_name():
    @reports_progress("double", every_s=60.0)
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    assert double(21) == 42 and double.__name__ == "double" and double.__doc__ == "Twice x."
