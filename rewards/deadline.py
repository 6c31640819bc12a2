"""Run a picklable function in a persistent worker process under a hard wall-clock deadline.

Reward checkers call into sympy, where one C-level bigint power can run for hours, and math-verify's
own timeout uses ``signal.alarm``, which only works on the main thread. A worker process can always
be killed, from any thread, so ``DeadlineExecutor.run`` sends the call to one, waits at most
``timeout`` seconds, and on overrun SIGKILLs it and starts a replacement::

    with DeadlineExecutor() as pool:
        pool.run(pow, 9, 9**9, timeout=1.0)  # Outcome(value=None, status="timeout", error="...")
        pool.run(pow, 2, 10, timeout=1.0)  # Outcome(value=1024, status="ok", error=None)

A worker is a fresh interpreter started with ``subprocess`` (``python -c`` importing this module),
talking to its parent over a socket pair. multiprocessing's "spawn" and "forkserver" would re-import
the caller's ``__main__`` in the worker, re-running a script without an ``if __name__ == "__main__":``
guard (whose reward call then crashes the worker); a worker started here imports only the modules
its calls need, so rewards work the same from such a script, a notebook, a thread or a Ray actor.
The price: a function defined in the caller's ``__main__`` cannot run in a worker (the call's outcome
says it could not be unpickled); put it in a module.

Workers start lazily and are reused; each concurrent caller gets its own (at most ``max_workers``
when given).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "timeout", "error"]

# Set in worker processes: the run() that sent the call there already enforces a deadline, so a
# nested run() calls the function inline instead of starting workers of its own.
_INSIDE_WORKER = False
# The worker reads its sys.path before importing anything outside the standard library, so that it
# finds this package (and the callers' modules) where the parent does.
_BOOTSTRAP = (
    "import sys; from multiprocessing.connection import Connection; conn = Connection(int(sys.argv[1])); "
    "sys.path[:] = conn.recv(); from rewards.deadline import _worker_main; _worker_main(conn)"
)
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# Killed at interpreter exit: an idle worker exits when its parent's end of the socket closes, but one
# busy with a hung call (a daemon thread was waiting on it) would run on, holding the parent's stdout.
_LIVE: set[subprocess.Popen] = set()
os.register_at_fork(after_in_child=_LIVE.clear)  # a forked child must not kill its parent's workers


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


def _worker_main(conn: Connection) -> None:
    """The worker's loop (started by ``_BOOTSTRAP``): announce readiness, then answer calls until EOF."""
    global _INSIDE_WORKER
    _INSIDE_WORKER = True
    # Ctrl-C reaches the whole process group; the parent decides when a worker dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hello = _execute(conn.recv_bytes())  # the initializer, sent as the first call
    conn.send(hello)
    if hello[0] != "ok":
        return
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
    def __init__(self, initializer: Callable[[], None] | None) -> None:
        init = pickle.dumps((initializer or int, (), {}), protocol=pickle.HIGHEST_PROTOCOL)
        path = sys.path if _PACKAGE_ROOT in sys.path else [*sys.path, _PACKAGE_ROOT]
        self.conn, child_conn = multiprocessing.Pipe()
        with child_conn:
            # Queued before the worker exists, so these sends can neither block nor fail.
            self.conn.send(path)
            self.conn.send_bytes(init)
            fd = child_conn.fileno()
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL
            )
        _LIVE.add(self.process)
        self.ready = False

    def wait_ready(self, deadline: float) -> tuple[Status, str | None]:
        """Wait until the initializer has run; after "error" or "timeout" the caller kills the worker."""
        if self.ready:
            return "ok", None
        try:
            status, error = self._receive(deadline)
        except (EOFError, OSError):
            self.kill()
            return "error", f"it exited with code {self.process.returncode}"
        self.ready = status == "ok"
        return status, error

    def call(self, payload: bytes, deadline: float) -> tuple[Status, Any]:
        """Send one call; raises EOFError or OSError when the worker has died."""
        self.conn.send_bytes(payload)
        return self._receive(deadline)

    def _receive(self, deadline: float) -> tuple[Status, Any]:
        if not self.conn.poll(max(0.0, deadline - time.monotonic())):
            return "timeout", None
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()  # a no-op once it has exited
        self.process.wait()
        self.conn.close()
        _LIVE.discard(self.process)


@atexit.register
def _kill_live_workers() -> None:
    for process in _LIVE.copy():
        process.kill()
        process.wait()


class DeadlineExecutor:
    """Persistent worker processes that run one call each at a time, killed when a call overruns."""

    def __init__(
        self,
        *,
        initializer: Callable[[], None] | None = None,
        max_workers: int | None = None,
        startup_in_deadline: bool = True,
        startup_timeout: float = 60.0,
    ) -> None:
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
        ``startup_in_deadline=False``, starting one. ``fn``, its arguments and its result must pickle,
        and ``fn`` must be importable by module name; a call that cannot be pickled raises here, before
        any worker is involved.
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
        All or nothing: when one worker fails to start, the others started here are killed too.
        """
        with self._lock:
            missing = workers - len(self._idle)
        fresh: list[_Worker] = []
        try:
            for _ in range(missing):
                fresh.append(_Worker(self._initializer))
            deadline = time.monotonic() + timeout
            for worker in fresh:
                status, error = worker.wait_ready(deadline)
                if status == "timeout":
                    raise RuntimeError(f"a worker did not start within {timeout} s")
                if status == "error":
                    raise RuntimeError(f"a worker did not start: {error}")
        except BaseException:
            for worker in fresh:
                worker.kill()
            raise
        for worker in fresh:
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
        if self._startup_in_deadline or worker.ready:
            status, error = worker.wait_ready(deadline)  # at once when the worker is ready
        else:
            status, error = worker.wait_ready(time.monotonic() + self._startup_timeout)
            if status == "timeout":
                status, error = "error", f"no reply within {self._startup_timeout} s"
            deadline = time.monotonic() + timeout
        if status == "error":
            worker.kill()
            return Outcome(None, "error", f"worker could not start: {error}")
        if status == "ok":
            try:
                status, value = worker.call(payload, deadline)
            except (EOFError, OSError):
                worker.kill()
                return Outcome(None, "error", f"worker process died (exit code {worker.process.returncode})")
        if status == "timeout":
            worker.kill()
            self._checkin(_Worker(self._initializer))  # warm up the replacement now
            return Outcome(None, "timeout", f"no result within {timeout} s; worker killed")
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
        return _Worker(self._initializer)

    def _checkin(self, worker: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
        worker.kill()
