"""A caller with no ``if __name__ == "__main__":`` guard that scores rewards (run by test_rewards_anywhere.py).

Run: PYTHONPATH=. python tests/unit/scripts/no_guard.py main|thread CASES_JSON
(also as ``-m tests.unit.scripts.no_guard`` or fed to ``python -`` on stdin, the way a notebook's main
module has no file). ``CASES_JSON`` is a list of ``[reward_name, completion, answer]``. It prints ``BODY``
when its body runs, then one JSON object: the scores (from the main thread, or from two threads at once)
and what a worker said about a function defined in this ``__main__``.
"""

import json
import sys
import threading

from rewards.deadline import DeadlineExecutor
from rewards.registry import get_reward

print("BODY", flush=True)
mode, cases = sys.argv[1], json.loads(sys.argv[2])


def score_all() -> list[float]:
    return [get_reward(name)(completion, answer) for name, completion, answer in cases]


def square(x: int) -> int:
    return x * x


if mode == "main":
    scores = [score_all()]
else:
    scores = []
    threads = [threading.Thread(target=lambda: scores.append(score_all())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
with DeadlineExecutor() as executor:
    local = executor.run(square, 3, timeout=10.0)
print(json.dumps({"scores": scores, "local_function": local.error}))
