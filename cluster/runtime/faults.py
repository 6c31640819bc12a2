"""Fault injection for the fault-tolerance tests: SIGKILL a run's own actors at chosen calls.

``R1RAY_FAULTS="rollout-0@generate:4,learner-0@train:3"`` makes the driver SIGKILL the process of
actor ``rollout-0`` as the 4th ``Fleet.generate`` call is sent (after the kill, before the call: so the
call is lost, whatever the timing), and ``learner-0`` as the 3rd ``Fleet.train`` call is. The kill is a
real one, of the real process, as a crash or a lost node would be; the supervisor in ``Fleet`` must then
cope. Unset, this costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal
import time

import ray


class FaultPlan:
    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get("R1RAY_FAULTS", "") if spec is None else spec
        self.plan: dict[tuple[str, int], list[str]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            actor, _, rest = item.partition("@")
            point, _, count = rest.partition(":")
            if not actor or not point or not count.isdigit():
                raise ValueError(f"R1RAY_FAULTS: expected actor@call:N, got {item!r}")
            self.plan.setdefault((point, int(count)), []).append(actor)
        self.calls: dict[str, int] = {}
        self.pids: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.plan)

    def record(self, actors: dict[str, object]) -> None:
        """Remember the processes of ``actors`` (name -> handle) while they are idle."""
        if self.plan:
            self.pids |= {name: ray.get(a.__ray_call__.remote(lambda self: os.getpid())) for name, a in actors.items()}

    def at(self, point: str) -> None:
        """Called right before a call of kind ``point`` is sent to the actors."""
        if not self.plan:
            return
        self.calls[point] = self.calls.get(point, 0) + 1
        for name in self.plan.get((point, self.calls[point]), []):
            pid = self.pids[name]
            print(f"fault injection: SIGKILL {name} (pid {pid}) at {point} call {self.calls[point]}", flush=True)
            try:
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):  # gone before the call is sent
                    time.sleep(0.05)
                    os.kill(pid, 0)
            except ProcessLookupError:
                pass


FAULTS = FaultPlan()
"""The driver's one plan: its call counters run on across fleets (a pipeline's stages) and restarted actors."""
