"""Progress lines for long work: every few seconds, how far it is and about how long is left.

``track(iterable, label)`` wraps a loop of known length (pre-training steps, SFT or RM steps,
sampling chunks): a line every ``every_s`` seconds with done/total, the rate and the time left at
that rate. ``reports_progress(label)`` wraps one long call of unknown length (an evaluation is a
few big generate calls): a line every ``every_s`` seconds with the time so far and, from the
second call on, the time left judged by how long the previous call with that label took. Work
that ends within ``every_s`` prints nothing extra, so short runs stay quiet.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable)

# label -> seconds its previous call took: the estimate for the next one (one process, one driver).
_LAST_SECONDS: dict[str, float] = {}


def say(line: str) -> None:
    print(line, flush=True)


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts finished items of ``total`` and prints a line when ``every_s`` has passed since the last one."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        already: int = 0,
        unit: str = "steps",
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], None] = say,
    ) -> None:
        if total < 0 or already < 0:
            raise ValueError(f"Progress({label!r}): total ({total}) and already ({already}) must be >= 0")
        self.label, self.total, self.already, self.unit = label, total, already, unit
        self.every_s, self.clock, self.write = every_s, clock, write
        self.done = 0
        self.started = self.last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s and self.done < self.total:
            self.write(self.line(now))
            self.last = now

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = f"~{duration((self.total - self.done) / rate)} left" if rate > 0 else "time left unknown"
        shown, whole = self.already + self.done, self.already + self.total
        percent = 100.0 * shown / whole if whole else 100.0
        return (
            f"{self.label}: {shown}/{whole} {self.unit} ({percent:.0f}%), {rate:.2f} {self.unit}/s, "
            f"{duration(elapsed)} elapsed, {left}"
        )


def track(
    items: Iterable[T],
    label: str,
    *,
    total: int | None = None,
    already: int = 0,
    unit: str = "steps",
    every_s: float = 5.0,
) -> Iterator[T]:
    """Yield ``items``, printing progress every ``every_s`` seconds; ``already``: items done before (a resume)."""
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    progress = Progress(label, count, already=already, unit=unit, every_s=every_s)
    for item in items:
        yield item
        progress.advance()


@contextmanager
def heartbeat(
    label: str,
    *,
    every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    write: Callable[[str], None] = say,
) -> Iterator[None]:
    """While the block runs, a line every ``every_s`` seconds: time so far, and left if ``label`` ran before."""
    started, previous = clock(), _LAST_SECONDS.get(label)
    finished = threading.Event()

    def beat() -> None:
        while not finished.wait(every_s):
            elapsed = clock() - started
            if previous is None:
                guess = ""
            elif elapsed < previous:
                guess = f", ~{duration(previous - elapsed)} left (the last one took {duration(previous)})"
            else:
                guess = f", longer than the last one ({duration(previous)})"
            write(f"{label}: {duration(elapsed)} so far{guess}")

    thread = threading.Thread(target=beat, name=f"progress: {label}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()
        _LAST_SECONDS[label] = clock() - started


def reports_progress(label: str, every_s: float = 10.0) -> Callable[[F], F]:
    """Decorator: the call runs under ``heartbeat(label)``."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with heartbeat(label, every_s=every_s):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
