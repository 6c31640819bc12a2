"""Stopping on request: SIGTERM (``ray job stop``, spot preemption) ends a stage cleanly.

The first SIGTERM lets the current step finish; the stage then writes a checkpoint and raises
``Stopped``, which the CLI turns into exit code 0 and a line saying how to resume. If the step
has not finished within ``cluster.stop_grace_s``, it is abandoned (the last complete checkpoint
stays); a second SIGTERM abandons it at once.
"""

from __future__ import annotations

import _thread
import signal
import threading


class GracefulStop:
    def __init__(self) -> None:
        self.requested = False
        self.grace_s = 120.0
        self._timer: threading.Timer | None = None

    def install(self, grace_s: float) -> None:
        """Take over SIGTERM (after ``ray.init``, which installs its own handler). Main thread only."""
        self.grace_s = grace_s
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise SystemExit(128 + signum)
        self.requested = True
        print(f"SIGTERM: finishing this step, then a checkpoint (abandoned after {self.grace_s:.0f} s)", flush=True)
        self._timer = threading.Timer(self.grace_s, _thread.interrupt_main)
        self._timer.daemon = True
        self._timer.start()

    def done(self) -> None:
        """The checkpoint is written (or the stage finished): no abandoning any more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


STOP = GracefulStop()
"""The process's one stop flag (the driver's main thread owns SIGTERM)."""
