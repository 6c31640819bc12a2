"""benchmarks/step_profile.py's attribution of profiled self time to areas (what its table adds up)."""

import cProfile
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from step_profile import area, by_area  # noqa: E402


def test_functions_are_attributed_by_where_they_live():
    site = "/venv/lib/python3.11/site-packages"
    assert area("~", "<built-in method torch._C._nn.linear>") == "torch kernels"
    assert area("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>") == "torch kernels"
    assert area("~", "<method 'acquire' of '_thread.lock' objects>") == "waiting"
    assert area("~", "<method 'poll' of 'select.epoll' objects>") == "waiting"
    assert area("~", "<built-in method torch.index_select>") == "torch kernels"  # not a select() wait
    assert area("~", "<built-in method numpy.asarray>") == "other"  # not Ray
    assert area(f"{site}/vllm/v1/core/sched/scheduler.py", "schedule") == "vLLM scheduler"
    assert area(f"{site}/vllm/v1/worker/gpu_model_runner.py", "execute_model") == "vLLM model runner"
    assert area(f"{site}/torch/nn/modules/module.py", "_call_impl") == "torch Python"
    assert area(f"{site}/ray/_private/serialization.py", "serialize") == "Ray"
    assert area("/work/main/actors/learner.py", "train_step") == "r1ray"
    assert area("/usr/lib/python3.11/json/decoder.py", "decode") == "other"
    assert area(f"{site}/ray/_private/worker.py", "get_objects") == "waiting"  # blocks on the actors


def test_a_real_profile_adds_up_to_its_total_self_time():
    model = torch.nn.Linear(64, 64)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(20):
        model(torch.randn(32, 64)).sum().backward()
    prof.disable()
    import pstats

    stats = pstats.Stats(prof).stats
    areas = by_area(stats)
    assert sum(areas.values()) == pytest.approx(sum(v[2] for v in stats.values()))
    assert areas["torch kernels"] > 0 and areas["torch Python"] > 0
