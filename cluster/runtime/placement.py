"""Actor placement: one placement group per role, from the run's config.

``cluster.placement: split`` (the default): learner ranks in one group, packed (PACK: onto as few
nodes as hold them, spilling over when one node is too small; they all-gather parameters every step),
rollout engines in another, spread (they are independent). An engine with tensor parallelism k holds
one bundle of k GPUs (a bundle never spans nodes) and vLLM starts its k workers itself.
``colocated``: one group whose bundle i holds learner rank i and engine i, sharing its GPU (each actor
asks for half of it). Custom resources in the config (``rollout: 1``, ``learner: 1``) let the autoscaler
launch the right node type. The same code runs on one laptop and on a GPU cluster. ``actor_env`` and
``rollout_env``: the environment each actor's process starts with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import RunConfig
from cluster.runtime.weight_sync import weight_sync_backend

LEARNER_STRATEGY = "PACK"
ROLLOUT_STRATEGY = "SPREAD"
COLOCATED_GPU_SHARE = 0.5
"""What each of the two actors on a colocated GPU asks for (Ray gives both that GPU's CUDA_VISIBLE_DEVICES)."""


@dataclass
class Placement:
    rollout: PlacementGroup | None
    learner: PlacementGroup | None
    """None for a role the stage does not start (``sample``/``eval`` train nothing, ``sft`` may sample nothing)."""

    def rollout_slot(self, index: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.rollout, placement_group_bundle_index=index)

    def learner_slot(self, rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(self.learner, placement_group_bundle_index=rank)

    def remove(self) -> None:
        for group in {id(g): g for g in (self.rollout, self.learner) if g is not None}.values():
            ray.util.remove_placement_group(group)


def _bundle(cpus: float, gpus: int, resources: dict[str, float]) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **resources}


def rollout_bundles(cfg: RunConfig) -> list[dict[str, float]]:
    """One bundle per engine: its CPUs, its tensor-parallel GPUs, its custom resources."""
    r = cfg.rollout
    return [_bundle(r.cpus_per_worker, r.gpus_per_worker, r.resources)] * r.num_workers


def learner_bundles(cfg: RunConfig) -> list[dict[str, float]]:
    lc = cfg.learner
    return [_bundle(lc.cpus_per_rank, lc.gpus_per_rank, lc.resources)] * lc.world_size


def colocated_bundles(cfg: RunConfig) -> list[dict[str, float]]:
    """Bundle i: learner rank i and engine i on one GPU (or CPU only), their CPUs and resources summed."""
    r, lc = cfg.rollout, cfg.learner
    resources = dict(lc.resources)
    for key, value in r.resources.items():
        resources[key] = resources.get(key, 0.0) + value
    return [_bundle(lc.cpus_per_rank + r.cpus_per_worker, lc.gpus_per_rank, resources)] * lc.world_size


def gpu_share(cfg: RunConfig, role: str) -> float:
    """GPUs the actor of ``role`` (``rollout`` or ``learner``) asks for inside its bundle."""
    if role not in ("rollout", "learner"):
        raise ValueError(f"unknown role {role!r}: expected 'rollout' or 'learner'")
    gpus = cfg.rollout.gpus_per_worker if role == "rollout" else cfg.learner.gpus_per_rank
    return gpus * COLOCATED_GPU_SHARE if cfg.cluster.placement == "colocated" else float(gpus)


def actor_options(cfg: RunConfig, placement: Placement, role: str, index: int) -> dict:
    """Ray options placing rollout engine (or learner rank) ``index`` in its bundle."""
    section = cfg.rollout if role == "rollout" else cfg.learner
    slot = placement.rollout_slot(index) if role == "rollout" else placement.learner_slot(index)
    return {
        "num_cpus": cfg.rollout.cpus_per_worker if role == "rollout" else cfg.learner.cpus_per_rank,
        "num_gpus": gpu_share(cfg, role),
        "resources": section.resources or None,
        "scheduling_strategy": slot,
    }


def required_cpus(cfg: RunConfig, *, learners: bool = True) -> float:
    """Logical CPUs the run reserves (``learners``: with its learner ranks; an evaluation fleet has none): a
    local cluster must offer at least this many."""
    return (
        cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
        + (cfg.learner.world_size * cfg.learner.cpus_per_rank if learners else 0)
        + (cfg.learner.reference_cpus if learners and reference_actor(cfg) else 0)
        + cfg.reward.num_scorers * SCORER_CPUS
        + sum(spec.cpus for spec in cfg.reward.models.values())
    )


SCORER_CPUS = 0.5


def reference_actor(cfg: RunConfig) -> bool:
    """Whether an RL run of ``cfg`` starts the reference actor: ``learner.reference: actor`` and a KL term."""
    return cfg.learner.reference == "actor" and cfg.grpo.kl_coef > 0


def create_placement(
    cfg: RunConfig, timeout_s: float = 600.0, *, rollouts: bool = True, learners: bool = True, prefix: str = ""
) -> Placement:
    """Reserve the bundles of the roles asked for; fails with a clear message if the cluster cannot provide them."""
    rollout = learner = None
    if cfg.cluster.placement == "colocated" and rollouts and learners:
        name = f"{prefix}{cfg.name}-colocated"
        shared = placement_group(colocated_bundles(cfg), strategy=LEARNER_STRATEGY, name=name)
        return _wait(cfg, Placement(shared, shared), timeout_s)
    if rollouts:
        rollout = placement_group(rollout_bundles(cfg), strategy=ROLLOUT_STRATEGY, name=f"{prefix}{cfg.name}-rollout")
    if learners:
        learner = placement_group(learner_bundles(cfg), strategy=LEARNER_STRATEGY, name=f"{prefix}{cfg.name}-learner")
    return _wait(cfg, Placement(rollout, learner), timeout_s)


def _wait(cfg: RunConfig, placement: Placement, timeout_s: float) -> Placement:
    rollout, learner = placement.rollout, placement.learner
    groups = list({id(g): g for g in (rollout, learner) if g is not None}.values())
    if not groups:
        return placement
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        for group in groups:  # else the autoscaler keeps asking for nodes for them
            ray.util.remove_placement_group(group)
        needs = []
        if rollout is learner:
            needs.append(f"{cfg.learner.world_size} x {rollout.bundle_specs[0]} for colocated learner + rollout")
        elif rollout is not None:
            needs.append(f"{cfg.rollout.num_workers} x {rollout.bundle_specs[0]} for rollout")
        if learner is not None and learner is not rollout:
            needs.append(f"{cfg.learner.world_size} x {learner.bundle_specs[0]} for the learner")
        raise RuntimeError(
            f"the Ray cluster could not place the run's actors within {timeout_s:.0f} s: it needs "
            f"{' and '.join(needs)}; available: {ray.available_resources()}"
        )
    return placement


def actor_env() -> dict[str, str]:
    """Environment of every rollout and learner actor: their output reaches the driver's console,
    which should show one line per step, not library progress bars and deprecation notices."""
    return {
        # vLLM logs every request and weight reload at INFO.
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning"),
    }


def rollout_env(cfg: RunConfig) -> dict[str, str]:
    """Environment of a rollout actor's process."""
    env = actor_env()
    in_actor = cfg.rollout.engine_in_actor
    if in_actor is None:
        in_actor = cfg.rollout.gpus_per_worker == 0
    if weight_sync_backend(cfg) == "ipc":
        # CUDA IPC handles reach vLLM's workers through its RPC serialisation, which pickles them only when allowed.
        env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
    if in_actor:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # The model runs in this process: one thread per CPU the actor reserved (at least one).
        env["OMP_NUM_THREADS"] = str(max(1, int(cfg.rollout.cpus_per_worker)))
    return env
