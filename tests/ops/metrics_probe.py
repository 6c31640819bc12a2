"""Helper for test_grafana_dashboard.py: which Prometheus names does Ray give r1ray's metrics?

Run as `python metrics_probe.py <gcs address> <metrics url> <timeout s>`. It creates the driver's
gauges and counter under the names in cluster/runtime/metrics.py (tag `run`), sets them, and scrapes the
node's Prometheus endpoint until every one shows up (or the timeout passes). Prints one JSON line:
the r1ray series names found.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import ray
from ray.util.metrics import Counter, Gauge

from cluster.runtime.metrics import RAY_GAUGES, TIMEOUT_COUNTER


def scraped_names(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {line.split("{")[0].split(" ")[0] for line in lines if "r1ray_" in line and not line.startswith("#")}


def main(address: str, url: str, timeout_s: float) -> list[str]:
    ray.init(address=address, log_to_driver=False)
    tags = {"run": "metrics-probe"}
    for value, name in enumerate(RAY_GAUGES.values(), start=1):
        Gauge(name, description=name, tag_keys=("run",)).set(float(value), tags=tags)
    Counter(TIMEOUT_COUNTER, description=TIMEOUT_COUNTER, tag_keys=("run",)).inc(2.0, tags=tags)

    wanted = len(RAY_GAUGES) + 1
    deadline = time.monotonic() + timeout_s
    found: set[str] = set()
    while time.monotonic() < deadline:
        try:
            found = scraped_names(url)
        except OSError:
            pass
        if len(found) >= wanted:
            break
        time.sleep(0.5)
    return sorted(found)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
