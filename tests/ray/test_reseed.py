"""Re-seeding the engines: the samples of a generate call are a function of its seed key, not of what the
engine sampled before. Here with vLLM's engine core in a child process (the GPU layout), where requests
carry their own seeds because batches vary from run to run; the engine-in-actor layout (the workers'
generator re-seeded through collective RPC) is covered by the e2e exact-resume test."""

import numpy as np
import pytest

from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer
from cluster.payloads import SamplingSpec
from cluster.runtime.fleet import Fleet

pytestmark = pytest.mark.ray


def test_same_key_same_samples_whatever_came_before(ray_cluster, tied_model):
    cfg = RunConfig.model_validate(
        {"model": {"max_prompt_len": 16, "max_response_len": 12}, "rollout": {"engine_in_actor": False}}
    )
    tok = build_tokenizer()
    prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(6)]
    spec = SamplingSpec(max_tokens=12)
    fleet = Fleet(cfg, str(tied_model), str(tied_model), learners=False)
    try:
        first = fleet.generate(prompts, 4, spec, seed="train/0")
        fleet.generate(prompts, 4, spec)  # moves the generator along
        fleet.generate(prompts, 4, spec, seed="train/8")
        again = fleet.generate(prompts, 4, spec, seed="train/0")
        other = fleet.generate(prompts, 4, spec, seed="train/16")
    finally:
        fleet.shutdown()
    assert again.texts == first.texts
    np.testing.assert_array_equal(again.tokens, first.tokens)
    assert other.texts != first.texts  # a random model at T=1: another key, other samples
