"""Stopping at a stop string, on both of the rollout engine's paths.

A stop string that is one added, non-special token of the tokenizer (the demo's ``</answer>``) becomes a stop token
id and vLLM skips detokenizing while sampling; any other stop string goes through vLLM's stop-string
matching. Both must give the same kind of output: the text ends with the stop string exactly when the
completion stopped on it, and the text is the decoding of the completion's tokens.

A real vLLM engine inside a Ray actor (the engine core in the actor's process, as on CPU by default).
"""

import numpy as np
import pytest
import ray

from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer
from cluster.payloads import SamplingSpec
from cluster.runtime.fleet import Fleet

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def engine(ray_cluster, tied_model):
    cfg = RunConfig.model_validate({"model": {"max_prompt_len": 16, "max_response_len": 16}, "grpo": {"kl_coef": 0.0}})
    fleet = Fleet(cfg, str(tied_model), str(tied_model), optimizer_steps=1, reference=False)
    yield fleet.rollouts[0]
    fleet.shutdown()


@pytest.mark.parametrize(
    ("stop", "fast_path"),
    [("</answer>", True), (";", False)],  # an added token / a plain character
)
def test_completions_end_exactly_at_the_stop_string(engine, stop, fast_path):
    tok = build_tokenizer()
    params = ray.get(engine.__ray_call__.remote(lambda self: self._stop_params((stop,))))
    assert ("stop_token_ids" in params) is fast_path and params.get("detokenize", True) is not fast_path
    prompts = [np.array(tok.encode(f"{100 + 7 * i}+{200 + i}="), dtype=np.int32) for i in range(8)]
    # A random model: about half of 16-token completions draw the stop token somewhere.
    out = ray.get(engine.generate.remote(prompts, 4, SamplingSpec(max_tokens=16, stop=(stop,))))
    assert out.num_completions == 32
    stopped = 0
    for text, reason, tokens, n in zip(out.texts, out.finish_reasons, out.tokens, out.lengths, strict=True):
        assert text == tok.decode(tokens[:n], skip_special_tokens=True)
        assert text.count(stop) == (1 if text.endswith(stop) else 0)
        if reason == "stop" and text.endswith(stop):
            stopped += 1
        else:  # ran to max_tokens, or drew <eos>: the stop string never appeared
            assert stop not in text and (reason == "length") == (n == 16)
    assert stopped > 0
    assert out.logprobs is not None and np.all(out.logprobs[np.arange(16)[None] < out.lengths[:, None]] <= 0)
