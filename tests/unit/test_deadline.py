"""DeadlineExecutor: results, errors and overruns, reuse after a kill, and calls from several threads.

Run: .venv/bin/python -m pytest tests/unit/test_deadline.py
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rewards.deadline import DeadlineExecutor, Outcome


def sleep_forever() -> None:
    while True:
        time.sleep(1)


def explode(message: str) -> None:
    raise ValueError(message)


def worker_pid() -> int:
    return os.getpid()


def nested_run(value: int) -> Outcome:
    with DeadlineExecutor() as inner:
        return inner.run(abs, value, timeout=1.0)


def slow_start() -> None:
    time.sleep(1.0)


def broken_start() -> None:
    raise ImportError("no such dependency")


def fail_first(claim: str) -> None:
    """The first worker to claim ``claim`` (a directory) fails to start; the others start."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(claim)
        raise ImportError("no such dependency")


def hang_first(claim: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(claim)
        sleep_forever()


def make_lock() -> threading.Lock:
    return threading.Lock()


@pytest.fixture(scope="module")
def pool() -> Iterator[DeadlineExecutor]:
    with DeadlineExecutor(max_workers=4) as executor:
        yield executor


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "expected"),
    [
        (pow, (2, 10), {}, Outcome(1024, "ok")),
        (divmod, (7, 2), {}, Outcome((3, 1), "ok")),
        (sorted, ([3, 1, 2],), {"reverse": True}, Outcome([3, 2, 1], "ok")),
        (explode, ("boom",), {}, Outcome(None, "error", "ValueError: boom")),
        (divmod, (1, 0), {}, Outcome(None, "error", "ZeroDivisionError: integer division or modulo by zero")),
        (
            make_lock,
            (),
            {},
            Outcome(None, "error", "result could not be sent back: TypeError: cannot pickle '_thread.lock' object"),
        ),
        (nested_run, (-3,), {}, Outcome(Outcome(3, "ok"), "ok")),  # runs inline inside the worker
    ],
)
def test_run(pool: DeadlineExecutor, fn: Callable[..., object], args: tuple, kwargs: dict, expected: Outcome) -> None:
    assert pool.run(fn, *args, timeout=5.0, **kwargs) == expected


def test_timeout_kills_worker_and_executor_recovers(pool: DeadlineExecutor) -> None:
    pool.run(worker_pid, timeout=5.0)  # a warm worker, so the deadline below measures the call alone
    start = time.monotonic()
    outcome = pool.run(sleep_forever, timeout=0.5)
    assert outcome.status == "timeout" and outcome.value is None and "0.5" in outcome.error
    assert time.monotonic() - start < 1.5
    assert pool.run(pow, 3, 2, timeout=5.0) == Outcome(9, "ok")


def test_worker_is_reused(pool: DeadlineExecutor) -> None:
    first = pool.run(worker_pid, timeout=5.0).value
    assert pool.run(worker_pid, timeout=5.0).value == first != os.getpid()


def test_dead_worker_is_an_error_and_replaced(pool: DeadlineExecutor) -> None:
    outcome = pool.run(os._exit, 3, timeout=5.0)
    assert outcome == Outcome(None, "error", "worker process died (exit code 3)")
    assert pool.run(pow, 2, 3, timeout=5.0) == Outcome(8, "ok")


def test_unpicklable_call_raises_before_any_worker(pool: DeadlineExecutor) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pool.run(lambda: 1, timeout=1.0)


def test_threads_run_concurrently_and_one_hang_does_not_block_the_others(pool: DeadlineExecutor) -> None:
    outcomes: dict[int, Outcome] = {}

    def call(i: int) -> None:
        outcomes[i] = pool.run(sleep_forever, timeout=1.0) if i == 0 else pool.run(pow, i, 2, timeout=5.0)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert time.monotonic() - start < 4.5  # the hang costs 1 s; starting three workers takes the rest
    assert outcomes[0].status == "timeout"
    assert [outcomes[i] for i in (1, 2, 3)] == [Outcome(1, "ok"), Outcome(4, "ok"), Outcome(9, "ok")]


def test_waiting_for_a_free_worker_counts_against_the_deadline() -> None:
    with DeadlineExecutor(max_workers=1) as single:
        busy = threading.Thread(target=single.run, args=(time.sleep, 2.0), kwargs={"timeout": 5.0})
        busy.start()
        time.sleep(0.2)
        start = time.monotonic()
        outcome = single.run(pow, 2, 2, timeout=0.5)
        assert outcome.status == "timeout" and "no free worker" in outcome.error
        assert time.monotonic() - start < 1.0
        busy.join()


def test_close_kills_workers_and_refuses_new_calls() -> None:
    executor = DeadlineExecutor()
    pid = executor.run(worker_pid, timeout=5.0).value
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.run(pow, 2, 2, timeout=1.0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_warm_up_takes_start_up_out_of_the_first_deadline() -> None:
    with DeadlineExecutor(initializer=slow_start) as cold:
        assert cold.run(pow, 2, 2, timeout=0.5).status == "timeout"
    with DeadlineExecutor(initializer=slow_start) as warm:
        warm.warm_up(2)
        assert warm.run(pow, 2, 2, timeout=0.5) == Outcome(4, "ok")


def test_startup_outside_the_deadline_gives_a_replacement_worker_its_full_deadline() -> None:
    with DeadlineExecutor(startup_in_deadline=False, initializer=slow_start) as executor:
        assert executor.run(sleep_forever, timeout=0.3).status == "timeout"
        # the replacement needs longer than 0.3 s to start (slow_start); only the call is timed
        assert executor.run(pow, 2, 5, timeout=0.3) == Outcome(32, "ok")


def test_warm_up_reports_why_a_worker_cannot_start() -> None:
    with DeadlineExecutor(initializer=broken_start) as executor:
        with pytest.raises(RuntimeError, match="did not start: ImportError: no such dependency"):
            executor.warm_up()
        assert executor.run(pow, 2, 2, timeout=5.0) == Outcome(
            None, "error", "worker could not start: ImportError: no such dependency"
        )


@pytest.mark.parametrize(
    ("initializer", "message"),
    [(fail_first, "did not start: ImportError: no such dependency"), (hang_first, "did not start within 2.0 s")],
)
def test_warm_up_that_fails_leaves_no_worker_behind(tmp_path, initializer: Callable[[str], None], message: str) -> None:
    psutil = pytest.importorskip("psutil")
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with DeadlineExecutor(initializer=functools.partial(initializer, str(tmp_path / "claim"))) as executor:
        with pytest.raises(RuntimeError, match=message):
            executor.warm_up(3, timeout=2.0)
        assert {child.pid for child in psutil.Process().children(recursive=True)} == before
        executor.warm_up(2)  # the claim is taken: these start
        assert len(psutil.Process().children(recursive=True)) == len(before) + 2
