"""Actor placement: one placement group per role, from the run's config.

Learner ranks are packed (they all-gather parameters every step); rollout workers are spread
(they are independent). Custom resources in the config (``rollout: 1``, ``learner: 1``) let the
autoscaler launch the right node type. The same code runs on one laptop and on a GPU cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.config import RunConfig


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
        for group in (self.rollout, self.learner):
            if group is not None:
                ray.util.remove_placement_group(group)


def _bundle(cpus: float, gpus: int, resources: dict[str, float]) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **resources}


def required_cpus(cfg: RunConfig) -> float:
    """Logical CPUs the run reserves: a local cluster must offer at least this many."""
    return (
        cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
        + cfg.learner.world_size * cfg.learner.cpus_per_rank
        + cfg.reward.num_scorers * SCORER_CPUS
        + sum(spec.cpus for spec in cfg.reward.models.values())
    )


SCORER_CPUS = 0.5


def create_placement(
    cfg: RunConfig, timeout_s: float = 600.0, *, rollouts: bool = True, learners: bool = True
) -> Placement:
    """Reserve the bundles of the roles asked for; fails with a clear message if the cluster cannot provide them."""
    rollout = learner = None
    if rollouts:
        rollout = placement_group(
            [_bundle(cfg.rollout.cpus_per_worker, cfg.rollout.gpus_per_worker, cfg.rollout.resources)]
            * cfg.rollout.num_workers,
            strategy="SPREAD",
            name=f"{cfg.name}-rollout",
        )
    if learners:
        learner = placement_group(
            [_bundle(cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank, cfg.learner.resources)]
            * cfg.learner.world_size,
            strategy="PACK",
            name=f"{cfg.name}-learner",
        )
    groups = [g for g in (rollout, learner) if g is not None]
    if not groups:
        return Placement(None, None)
    ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
    if len(ready) < len(groups):
        for group in groups:  # else the autoscaler keeps asking for nodes for them
            ray.util.remove_placement_group(group)
        needs = []
        if rollout is not None:
            needs.append(f"{cfg.rollout.num_workers} x {rollout.bundle_specs[0]} for rollout")
        if learner is not None:
            needs.append(f"{cfg.learner.world_size} x {learner.bundle_specs[0]} for the learner")
        raise RuntimeError(
            f"the Ray cluster could not place the run's actors within {timeout_s:.0f} s: it needs "
            f"{' and '.join(needs)}; available: {ray.available_resources()}"
        )
    return Placement(rollout, learner)
