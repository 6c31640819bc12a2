"""Driver for test_autoscaling.py: asks a fake multinode cluster for a rollout slot and times the autoscaler.

Run as `python autoscale_probe.py <gcs address> <resource> <timeout s>`. It connects, places an
actor that needs `{<resource>: 1}` (only a worker node type carries it, so the autoscaler must launch
one), kills the actor, and waits until the autoscaler removes the idle node again. It prints one
JSON line: the seconds each way and the resources of the nodes it saw.
"""

from __future__ import annotations

import json
import sys
import time

import ray


@ray.remote(num_cpus=0)
class Probe:
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def wait_until(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"condition not met in {timeout_s} s; alive nodes: {alive_nodes()}")
        time.sleep(0.25)
    return time.monotonic() - start


def main(address: str, resource: str, timeout_s: float) -> dict:
    ray.init(address=address, log_to_driver=False)
    nodes_before = alive_nodes()

    start = time.monotonic()
    probe = Probe.options(resources={resource: 1}).remote()
    probe_node = ray.get(probe.node_id.remote(), timeout=timeout_s)
    scale_up_s = time.monotonic() - start
    nodes_during = alive_nodes()

    ray.kill(probe)
    scale_down_s = wait_until(lambda: len(alive_nodes()) <= len(nodes_before), timeout_s)
    return {
        "scale_up_s": round(scale_up_s, 2),
        "scale_down_s": round(scale_down_s, 2),
        "probe_node": probe_node,
        "nodes_before": {n["NodeID"]: n["Resources"] for n in nodes_before},
        "nodes_during": {n["NodeID"]: n["Resources"] for n in nodes_during},
        "nodes_after": {n["NodeID"]: n["Resources"] for n in alive_nodes()},
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
