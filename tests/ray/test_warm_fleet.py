"""A pipeline's warm evaluation fleet (``cluster/runtime/warm_fleet.py``): a model loaded into a running engine
(vLLM's in-place ``reload_weights``) samples, with the same seeds, exactly what a fresh engine started on that
model samples; a dead warm engine means a new fleet, not a failed evaluation; the fleet's actors carry their
own names (a stage's fleet runs beside it: the pipeline e2e test) and are gone after ``close``.

Real vLLM engines in Ray actors, the eval stage's own ``run_eval``."""

import json

import pytest
import ray

from cluster.config import RunConfig
from cluster.data.builtin_model import save_random_model
from cluster.runtime.warm_fleet import PREFIX, WarmFleet
from cluster.stages.benchmark import run_eval

pytestmark = pytest.mark.ray


def _cfg(out, model, **tree) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "warm",
            "output_dir": str(out),
            "model": {"path": str(model), "max_prompt_len": 16, "max_response_len": 12},
            "data": {"eval_size": 16},
            "eval": {"samples": 3},
        }
        | tree
    )


def _samples(out) -> list[list[str]]:
    problems = json.loads((out / "report.json").read_text())["per_problem"]
    return [[s["text"] for s in p["samples"]] + [p["greedy"]["text"]] for p in problems]


def test_a_model_loaded_into_a_warm_fleet_samples_what_a_fresh_fleet_of_it_samples(ray_cluster, tied_model, tmp_path):
    other = save_random_model(tmp_path / "other", tie=True, seed=3)  # the same architecture, other weights
    run_eval(_cfg(tmp_path, tied_model), tmp_path / "fresh")  # a fleet of its own, shut down after
    warm = WarmFleet()
    try:
        # other rewards and sampling settings (a sample stage's, say): the same engines, the scorers reconfigured
        swapped = {"reward": {"weights": {"exact": 1.0, "language": 0.5}, "num_scorers": 2}, "rollout": {"top_p": 0.9}}
        run_eval(_cfg(tmp_path, other, **swapped), tmp_path / "other-eval", warm)
        assert len(warm.fleet.scorers) == 2
        engine = ray.get_actor(f"{PREFIX}rollout-0")  # beside a stage's fleet, named rollout-0
        run_eval(_cfg(tmp_path, tied_model), tmp_path / "warm", warm)
        assert (warm.starts, warm.reloads) == (1, 1) and len(warm.fleet.scorers) == 1
        assert ray.get_actor(f"{PREFIX}rollout-0")._actor_id == engine._actor_id  # the same engine, not a new one
        ray.kill(engine)  # a warm engine that died: the next evaluation gets a new fleet
        run_eval(_cfg(tmp_path, tied_model), tmp_path / "restarted", warm)
        assert (warm.starts, warm.reloads) == (2, 1)
    finally:
        warm.close()
    with pytest.raises(ValueError):
        ray.get_actor(f"{PREFIX}rollout-0")
    fresh = _samples(tmp_path / "fresh")
    assert _samples(tmp_path / "warm") == fresh == _samples(tmp_path / "restarted")
    assert _samples(tmp_path / "other-eval") != fresh  # the other model's: the reload did change the weights
    figures = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("fresh", "warm", "other-eval")]
    assert figures[0]["pass@1"] == figures[1]["pass@1"] and figures[0]["length_mean"] == figures[1]["length_mean"]
    # each scored by its own reward section: the swapped one's language rule, then the default rules again
    assert set(figures[2]["components"]) == {"exact", "format", "language"}
    assert set(figures[1]["components"]) == set(figures[0]["components"]) == {"exact", "format"}
