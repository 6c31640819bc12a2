"""A warm fleet: one set of engines, scorers and reward-model servers kept across a pipeline's stages.

A pipeline evaluates the base and then every ``sft`` / ``rl`` stage on the same held-out problems, and its
``sample`` and ``eval`` stages generate and score without training. Each of these takes a few seconds on a
small model; starting its fleet (the vLLM engines, the scorers, the reward-model servers) takes longer than
that (about 12-20 s each here, minutes on GPUs). A ``WarmFleet`` starts that fleet once and, for each later
model, reloads the engines' weights in place from the checkpoint (vLLM's ``reload_weights``) and drops their
prefix caches; where the next user's rewards differ, the scorers take the new rules in place and the
reward-model servers are swapped (``Fleet.use_rewards``).

It keeps the engines only when nothing they were built from differs: the config the engines read
(``fleet_key``: the rollout section but its sampling settings, which each call carries, the model
section, the cluster) and the checkpoint's files an engine reads besides the weights (the architecture's
``config.json``, the tokenizer files, the generation config). Anything else, a smaller student for
instance, shuts the fleet down and starts another. Its actors and placement groups carry the prefix
``eval-``, so they live beside a stage's own fleet (``rollout-0``, ``rm-helpful``, ...), and the pipeline
sizes a local cluster for both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cluster.config import RunConfig

PREFIX = "eval-"
ENGINE_FILES = ("config.json", "generation_config.json", "tokenizer", "special_tokens_map", "added_tokens", "vocab",
                "merges", "chat_template", "spiece", "preprocessor_config", "processor_config")  # fmt: skip
"""Names (or their starts) of the checkpoint files an engine reads besides the weights; also any ``*.py``
(a ``trust_remote_code`` model's code)."""
VOLATILE_KEYS = ("_name_or_path", "name_or_path", "transformers_version", "is_local", "local_files_only")
"""Keys of those JSON files that say where and with what a checkpoint was saved, not what it is (transformers
adds ``is_local`` and ``local_files_only`` when it saves a tokenizer it loaded)."""


def model_files_digest(model_path: str | Path) -> str:
    """A digest of the checkpoint files an engine reads besides the weights (``ENGINE_FILES``, their JSON
    without ``VOLATILE_KEYS``). A model that is not a local folder digests to its name."""
    path = Path(model_path)
    if not path.is_dir():
        return f"name:{model_path}"
    h = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if not (file.name.startswith(ENGINE_FILES) or file.suffix == ".py"):
            continue
        data = file.read_bytes()
        if file.suffix == ".json":
            tree = json.loads(data)
            if isinstance(tree, dict):
                tree = {k: v for k, v in tree.items() if k not in VOLATILE_KEYS}
            data = json.dumps(tree, sort_keys=True).encode()
        h.update(file.name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


SAMPLING_KEYS = ("temperature", "top_p", "stop")
"""Rollout settings every generate call carries (``SamplingSpec``): not what an engine is built from."""


def fleet_key(cfg: RunConfig, model_path: str | Path) -> str:
    """What the engines of a fleet without learners are built from: equal keys, interchangeable engines (given
    the weights). The rewards are not in it: a kept fleet takes another reward section in place."""
    tree = cfg.model_dump(mode="json")
    parts = {
        "rollout": {k: v for k, v in tree["rollout"].items() if k not in SAMPLING_KEYS},
        "cluster": tree["cluster"],
        "model": {k: v for k, v in tree["model"].items() if k != "path"},
        "learner_gpus": cfg.learner.gpus_per_rank,  # it picks the engines' weight-transfer backend
        "files": model_files_digest(model_path),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class WarmFleet:
    """``get(cfg, model)``: a fleet (no learners) whose engines hold ``model``; ``close()`` when done."""

    def __init__(self) -> None:
        self.fleet = None
        self.key: str | None = None
        self.starts = 0
        """Fleets started so far."""
        self.reloads = 0
        """Models loaded into a running fleet so far."""

    def get(self, cfg: RunConfig, model_path: str):
        from cluster.runtime.fleet import Fleet

        key = fleet_key(cfg, model_path)
        if self.fleet is not None and key == self.key:
            try:
                seconds = self.fleet.load_model(model_path)
            except Exception as err:  # a dead engine, a checkpoint it cannot take: a new fleet will do
                print(f"the warm fleet could not load {model_path} ({type(err).__name__}); starting a new one")
            else:
                self.fleet.use_rewards(cfg)
                self.fleet.restarts = dict.fromkeys(self.fleet.restarts, 0)  # cluster.max_restarts is per user
                self.reloads += 1
                print(f"{model_path} loaded into the warm fleet in {seconds:.2f} s", flush=True)
                return self.fleet
        self.close()
        self.fleet = Fleet(cfg, model_path, model_path, learners=False, prefix=PREFIX)
        self.key = key
        self.starts += 1
        return self.fleet

    def close(self) -> None:
        if self.fleet is not None:
            fleet, self.fleet, self.key = self.fleet, None, None
            fleet.shutdown()
