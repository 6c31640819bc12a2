"""Placement on a fake 4-GPU node: a Ray cluster that advertises 4 GPUs (Ray hands out GPU ids and sets
CUDA_VISIBLE_DEVICES whether or not they exist), r1ray's own placement groups and actor options, and probe
actors that report the GPUs Ray gave them. Runs in a child process: the session's Ray cluster has no GPUs.

Shows: a tensor-parallel engine gets k distinct GPUs of its own (vLLM's mp executor then starts its k workers
there); engines never share a GPU; a layout that needs more GPUs than exist fails with the clear placement
message; colocated learner rank i and engine i see the same GPU, and different i different GPUs.
"""

import json
import subprocess
import sys
import textwrap

import pytest

from tests.ray.conftest import REPO_ROOT

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent(
    """
    import json, os
    import ray
    from cluster.config import RunConfig
    from cluster.runtime.placement import actor_options, create_placement

    @ray.remote
    class Probe:
        def gpus(self):
            return sorted(str(g) for g in ray.get_gpu_ids()), os.environ.get("CUDA_VISIBLE_DEVICES")

    def probe(cfg, placement, role, index):
        actor = Probe.options(**actor_options(cfg, placement, role, index)).remote()
        return ray.get(actor.gpus.remote())

    def config(tree):
        return RunConfig.model_validate({"grpo": {"prompts_per_step": 4, "group_size": 2}, **tree})

    ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False)
    out = {}
    tp = config({"rollout": {"num_workers": 2, "gpus_per_worker": 2}})
    placement = create_placement(tp, timeout_s=30, learners=False)
    out["tp"] = [probe(tp, placement, "rollout", i) for i in range(2)]
    placement.remove()

    too_many = config({"rollout": {"num_workers": 3, "gpus_per_worker": 2}})
    try:
        create_placement(too_many, timeout_s=3, learners=False)
        out["too_many"] = None
    except RuntimeError as err:
        out["too_many"] = str(err)

    both = {"num_workers": 2, "gpus_per_worker": 1}
    colocated = config(
        {
            "rollout": both,
            "learner": {"world_size": 2, "gpus_per_rank": 1},
            "cluster": {"placement": "colocated"},
        }
    )
    placement = create_placement(colocated, timeout_s=30)
    out["colocated"] = [[probe(colocated, placement, role, i) for role in ("learner", "rollout")] for i in range(2)]
    out["colocated_groups"] = len({id(placement.rollout), id(placement.learner)})
    placement.remove()
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def layout() -> dict:
    env = {"RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_each_tensor_parallel_engine_gets_its_own_k_gpus(layout):
    (ids0, visible0), (ids1, visible1) = layout["tp"]
    assert len(ids0) == len(ids1) == 2
    assert not set(ids0) & set(ids1), "two engines were given the same GPU"
    assert set(ids0) | set(ids1) == {"0", "1", "2", "3"}
    assert sorted(visible0.split(",")) == ids0 and sorted(visible1.split(",")) == ids1


def test_a_layout_beyond_the_gpus_present_fails_with_the_placement_message(layout):
    message = layout["too_many"]
    assert message is not None and "could not place" in message
    assert "3 x {'CPU': 1.0, 'GPU': 2.0} for rollout" in message


def test_colocated_rank_and_engine_share_a_gpu(layout):
    (learner0, engine0), (learner1, engine1) = layout["colocated"]
    assert learner0 == engine0 and learner1 == engine1
    assert len(learner0[0]) == 1 and learner0[0] != learner1[0]
    assert layout["colocated_groups"] == 1
