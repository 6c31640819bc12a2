"""Named actors: creating one under a name a dead actor may still hold, waiting for names to be released,
and a free port on a chosen node (the rendezvous of a process group).

A killed actor's name is released asynchronously, so a re-created engine, scorer or learner rank (the
fleet's supervisor) and the next stage's fleet retry or wait instead of failing on "already taken".
"""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=0)
def free_address() -> tuple[str, int]:
    """The node's IP address and a port free on it now (schedule it on the node that will listen)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return ray.util.get_node_ip_address(), sock.getsockname()[1]


def retry_name(create, attempts: int = 50):
    """``create()`` a named actor, waiting for a dead one's name to be released."""
    for attempt in range(attempts):
        try:
            return create()
        except ValueError as err:  # "The name ... is already taken"
            if "already" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def wait_released(names: list[str], timeout_s: float = 30.0) -> None:
    """Wait (up to ``timeout_s`` in all) until no live actor holds any of ``names``."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.1)
