"""Run a picklable function in a persistent worker process under a hard wall-clock deadline.

Reward checkers call into sympy, where one C-level bigint power can run for hours, and math-verify's
own timeout uses ``signal.alarm``, which only works on the main thread. A worker process can always
be killed, from any thread, so ``DeadlineExecutor.run`` sends the call to one, waits at most
``timeout`` seconds, and on overrun SIGKILLs it and starts a replacement::

    with DeadlineExecutor() as pool:
        pool.run(pow, 9, 9**9, timeout=1.0)  # Outcome(value=None, status="timeout", error="...")
        pool.run(pow, 2, 10, timeout=1.0)  # Outcome(value=1024, status="ok", error=None)

Workers start lazily with the "spawn" method by default, or "forkserver" (callers are multi-threaded
Ray actors, where a plain fork is unsafe), and are reused; each concurrent caller gets its own
(at most ``max_workers`` when given).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

Status = Literal["ok", "timeout", "error"]

# Set in worker processes: a daemonic worker may not start children, and the run() that sent the
# call there already enforces a deadline, so a nested run() calls the function inline.
_INSIDE_WORKER = False
_PING = pickle.dumps((int, (), {}))


@dataclass(frozen=True)
class Outcome:
    """What a deadline-bound call produced: its value, or why there is none."""

    value: Any
    status: Status
    error: str | None = None


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[Status, Any]:
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}"


def _execute(payload: bytes) -> tuple[Status, Any]:
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:  # e.g. fn's module cannot be imported in the worker
        return "error", f"could not unpickle the call: {type(exc).__name__}: {exc}"
    return _call(fn, args, kwargs)


def _outcome(status: Status, value: Any) -> Outcome:
    return Outcome(value, "ok") if status == "ok" else Outcome(None, status, value)


def _worker_main(conn: Connection, initializer: Callable[[], None] | None, path: list[str]) -> None:
    global _INSIDE_WORKER
    _INSIDE_WORKER = True
    sys.path[:] = path  # forkserver children do not get the parent's sys.path the way spawn's do
    # Ctrl-C reaches the whole process group; the parent decides when a worker dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    while True:
        try:
            payload = conn.recv_bytes()
        except EOFError:
            return  # the parent closed its end or died
        reply = _execute(payload)
        try:
            conn.send(reply)
        except Exception as exc:  # the result did not pickle; the pipe is still clean
            conn.send(("error", f"result could not be sent back: {type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, initializer: Callable[[], None] | None) -> None:
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child_conn, initializer, list(sys.path)), daemon=True)
        self.process.start()
        child_conn.close()
        self.ready = False

    def call(self, payload: bytes, deadline: float) -> tuple[Status, Any]:
        """Send one call; raises EOFError or OSError when the worker has died."""
        self.conn.send_bytes(payload)
        if not self.conn.poll(max(0.0, deadline - time.monotonic())):
            return "timeout", None
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class DeadlineExecutor:
    """Persistent worker processes that run one call each at a time, killed when a call overruns."""

    def __init__(
        self,
        *,
        initializer: Callable[[], None] | None = None,
        max_workers: int | None = None,
        mp_context: str = "spawn",
        startup_in_deadline: bool = True,
        startup_timeout: float = 60.0,
    ) -> None:
        self._ctx = multiprocessing.get_context(mp_context)
        # A scorer must not score 0 because a replacement worker was still starting after a kill:
        # with startup_in_deadline=False the call's deadline starts once its worker is ready, and
        # start-up is bounded by startup_timeout instead.
        self._startup_in_deadline = startup_in_deadline
        self._startup_timeout = startup_timeout
        self._initializer = initializer
        # No cap by default: a hung call holds its worker for the whole deadline, and callers queued
        # behind it would time out too. The callers' own thread count bounds the workers instead.
        self._slots = threading.BoundedSemaphore(max_workers or sys.maxsize)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._owner_pid = os.getpid()
        self._closed = False

    def run(self, fn: Callable[..., Any], /, *args: Any, timeout: float, **kwargs: Any) -> Outcome:
        """Call ``fn(*args, **kwargs)`` in a worker; always returns within about ``timeout`` seconds.

        The deadline covers waiting for a free worker and, unless the executor was made with
        ``startup_in_deadline=False``, starting one. ``fn``, its arguments and its
        result must pickle; a call that cannot be pickled raises here, before any worker is involved.
        """
        if _INSIDE_WORKER:
            return _outcome(*_call(fn, args, kwargs))
        payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        deadline = time.monotonic() + timeout
        if not self._slots.acquire(timeout=timeout):
            return Outcome(None, "timeout", f"no free worker within {timeout} s")
        try:
            return self._run_on_worker(payload, deadline, timeout)
        finally:
            self._slots.release()

    def warm_up(self, workers: int = 1, timeout: float = 60.0) -> None:
        """Start idle workers until there are ``workers`` and wait until they are ready.

        Start-up (an interpreter plus the initializer's imports, about a second under load) otherwise
        counts against the first calls' deadlines; a service calls this once before taking requests.
        """
        with self._lock:
            missing = workers - len(self._idle)
        fresh = [_Worker(self._ctx, self._initializer) for _ in range(missing)]
        deadline = time.monotonic() + timeout
        for worker in fresh:
            try:
                ready = worker.call(_PING, deadline)[0] == "ok"
            except (EOFError, OSError):
                ready = False
            if not ready:
                worker.kill()
                raise RuntimeError(f"a worker did not start within {timeout} s (exit code {worker.process.exitcode})")
            worker.ready = True
            self._checkin(worker)

    def close(self) -> None:
        """Kill the idle workers now; busy ones are killed when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def __enter__(self) -> DeadlineExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run_on_worker(self, payload: bytes, deadline: float, timeout: float) -> Outcome:
        worker = self._checkout()
        if not self._startup_in_deadline and not worker.ready:
            try:
                worker.ready = worker.call(_PING, time.monotonic() + self._startup_timeout)[0] == "ok"
            except (EOFError, OSError):
                pass
            if not worker.ready:
                worker.kill()
                return Outcome(None, "error", f"worker did not start within {self._startup_timeout} s")
            deadline = time.monotonic() + timeout
        try:
            status, value = worker.call(payload, deadline)
        except (EOFError, OSError):
            worker.kill()
            return Outcome(None, "error", f"worker process died (exit code {worker.process.exitcode})")
        if status == "timeout":
            worker.kill()
            self._checkin(_Worker(self._ctx, self._initializer))  # warm up the replacement now
            return Outcome(None, "timeout", f"no result within {timeout} s; worker killed")
        worker.ready = True
        self._checkin(worker)
        return _outcome(status, value)

    def _checkout(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("DeadlineExecutor is closed")
            if self._owner_pid != os.getpid():
                # A forked child inherited the parent's pipes; those workers answer the parent only.
                self._idle, self._owner_pid = [], os.getpid()
            if self._idle:
                return self._idle.pop(0)  # oldest first: a replacement at the end may still be starting
        return _Worker(self._ctx, self._initializer)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.kill()
