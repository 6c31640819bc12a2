"""The run's actors as one object: create them from the config, fan calls out, tear them down.

Stages talk to ``Fleet`` only: ``generate`` splits prompts over the rollout workers, ``score``
splits completions over the reward scorers, ``train`` calls every learner rank with one batch and
an objective (each rank takes its shard of one object-store batch), ``sync_weights`` pushes the
new weights to every engine and runs the sync check (``runtime/weight_sync.py``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import ray

from actors.learner import PolicyLearner
from actors.rollout import RolloutWorker
from actors.scorer import RewardScorer
from cluster.algo.objective import Objective
from cluster.config import RunConfig
from cluster.errors import LearnerLost, RunAborted
from cluster.payloads import LearnerSpec, Rollouts, SamplingSpec, Scores, TrainBatch
from cluster.runtime.faults import FAULTS
from cluster.runtime.naming import free_address, retry_name, wait_released
from cluster.runtime.placement import (
    SCORER_CPUS,
    Placement,
    actor_env,
    actor_options,
    create_placement,
    rollout_env,
)
from cluster.runtime.weight_sync import PendingCheck, WeightSync, weight_sync_backend
from rewards.registry import RowInfo
from rewards.tags import judged_span


def _split(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def derive_seed(seed: int, worker: int, key: str) -> int:
    """A 63-bit seed for worker ``worker`` from the run's rollout seed and a call's key."""
    digest = hashlib.sha256(f"{seed}/{worker}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def add_model_rewards(cfg: RunConfig, scores: Scores, model_scores: dict[str, np.ndarray], info: list) -> Scores:
    """The rule scores plus each reward model's component (0 on rows of tasks it does not apply to)."""
    if not model_scores:
        return scores
    components, total = dict(scores.components), scores.total.copy()
    for name, values in model_scores.items():
        tasks = cfg.reward.only.get(name)
        applies = np.array([tasks is None or row.task in tasks for row in info])
        values = np.where(applies, np.asarray(values, dtype=np.float32), 0.0).astype(np.float32)
        components[name] = values
        total = total + cfg.reward.weights[name] * values
    return replace(scores, total=total.astype(np.float32), components=components)


class Fleet:
    def __init__(
        self,
        cfg: RunConfig,
        model_path: str,
        base_path: str,
        *,
        optimizer_steps: int = 1,
        reference: bool = False,
        rollouts: bool = True,
        learners: bool = True,
        head: str = "causal",
        restarts: dict[str, int] | None = None,
        prefix: str = "",
    ) -> None:
        """``reference``: learners load the frozen reference model (objectives with a KL term need it).
        ``rollouts``/``learners``: whether the stage starts rollout engines and learner ranks (``sample`` and
        ``eval`` train nothing; ``sft`` samples only to measure accuracy); weight sync needs both.
        ``head``: what the learners train (``causal`` language model, or ``reward`` model; see LearnerSpec).
        ``prefix``: before every actor's and placement group's name, for a fleet that lives beside a stage's own
        (a pipeline's warm evaluation fleet, ``runtime/warm_fleet.py``)."""
        self.cfg, self.head, self.prefix = cfg, head, prefix
        self.base_path = base_path
        self.version = 0
        """The policy version the engines hold (the last one pushed)."""
        self.restarts = restarts if restarts is not None else {"rollout": 0, "scorer": 0, "learner": 0, "reference": 0}
        """Actors re-created so far (shared with the stage: ``learner`` counts restarts of the whole learner group)."""
        self.faults = FAULTS
        self.rollouts, self.scorers, self.learners = [], [], []
        self.reference = None
        """The reference actor (``learner.reference: actor``), or None where the learner ranks hold the reference."""
        self.servers: dict[str, tuple[object, object]] = {}
        """Every reward-model server started, in use or set aside (``use_rewards``): name -> (spec, actor)."""
        self.weights: WeightSync | None = None
        self.placement: Placement = create_placement(cfg, rollouts=rollouts, learners=learners, prefix=prefix)
        try:
            self._start(model_path, base_path, optimizer_steps, reference, rollouts, learners)
        except BaseException:
            self.shutdown()  # no actors or reserved bundles outlive a failed start
            raise

    def _start(
        self, model_path: str, base_path: str, optimizer_steps: int, reference: bool, rollouts: bool, learners: bool
    ) -> None:
        cfg = self.cfg
        if rollouts:
            self.rollouts = [self._rollout(i, model_path) for i in range(cfg.rollout.num_workers)]
        scoring = rollouts or not learners  # a stage that samples, or one that only scores
        self.scorers = [self._scorer(i) for i in range(cfg.reward.num_scorers if scoring else 0)]
        models = cfg.reward.models.items() if scoring else ()
        self.servers = {name: (spec, self._reward_model(name, spec)) for name, spec in models}
        apart = reference and learners and cfg.learner.reference == "actor"
        if apart:
            self.reference = self._reference()
        self.learner_args = (optimizer_steps, reference and not apart)
        if learners:
            self.learners = self._learners(model_path, base_path, *self.learner_args)
        waits = [*self.rollouts, *self.reward_models.values(), *([self.reference] if apart else [])]
        ray.get([w.ready.remote() for w in waits])
        if rollouts and learners:
            tp = max(1, cfg.rollout.gpus_per_worker)
            self.weights = WeightSync(
                self.learners,
                self.rollouts,
                weight_sync_backend(cfg),
                ranks_per_engine=tp,
                dtype=cfg.model.dtype,
                colocated=cfg.cluster.placement == "colocated",
            )
            self.weights.connect(*self._rank0_address())
        self.faults.record(self._named())

    def _named(self) -> dict[str, object]:
        p = self.prefix
        actors = {f"{p}rollout-{i}": a for i, a in enumerate(self.rollouts)}
        actors |= {f"{p}reward-{i}": a for i, a in enumerate(self.scorers)}
        actors |= {f"{p}reference-0": self.reference} if self.reference is not None else {}
        return actors | {f"{p}learner-{i}": a for i, a in enumerate(self.learners)}

    # ------------------------------------------------------------------ supervision
    def _scorer(self, index: int):
        cfg = self.cfg
        return RewardScorer.options(name=f"{self.prefix}reward-{index}", num_cpus=SCORER_CPUS).remote(
            cfg.reward.rule_weights, cfg.reward.timeout_s, think_opened=cfg.data.think_opened, only=cfg.reward.only
        )

    def use_rewards(self, cfg: RunConfig) -> None:
        """Score with ``cfg``'s rewards from the next call on (a pipeline's warm fleet, ``runtime/warm_fleet.py``):
        the scorers take the new rules in place (fewer or more of them as it asks); a reward-model server stays while
        its spec is unchanged, idles (still reserved) while a section does not name it, and serves again later."""
        if self.learners:
            raise RuntimeError("use_rewards is for a fleet without learners")
        self.cfg, r = cfg, cfg.reward
        for scorer in self.scorers[r.num_scorers :]:
            ray.kill(scorer)
        self.scorers = self.scorers[: r.num_scorers]
        rules = (r.rule_weights, r.timeout_s)
        for i, scorer in enumerate(self.scorers):
            try:
                ray.get(scorer.configure.remote(*rules, think_opened=cfg.data.think_opened, only=r.only))
            except ray.exceptions.RayActorError as err:
                self._restart_scorer(i, err)  # from self.cfg: the new rules
        self.scorers += [retry_name(lambda i=i: self._scorer(i)) for i in range(len(self.scorers), r.num_scorers)]
        for name, (spec, actor) in list(self.servers.items()):
            if name in r.models and r.models[name] != spec:
                ray.kill(actor)
                del self.servers[name]
        new = {n: retry_name(lambda n=n: self._reward_model(n, r.models[n])) for n in r.models.keys() - self.servers}
        self.servers |= {name: (r.models[name], actor) for name, actor in new.items()}  # shut down with the fleet
        ray.get([actor.ready.remote() for actor in new.values()])
        self.faults.record(self._named())

    @property
    def reward_models(self) -> dict[str, object]:
        """The reward-model servers the reward section names (those set aside by ``use_rewards`` are not)."""
        return {name: self.servers[name][1] for name in self.cfg.reward.models if name in self.servers}

    def _count_restart(self, role: str, name: str, err: Exception) -> None:
        self.restarts[role] += 1
        limit = self.cfg.cluster.max_restarts
        cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if sum(self.restarts.values()) > limit:
            raise RunAborted(f"{name} died ({cause}); cluster.max_restarts ({limit}) reached, so the run stops here")
        print(f"fault: {name} died ({type(err).__name__}); re-creating it ({sum(self.restarts.values())}/{limit})")

    def _restart_rollout(self, index: int, err: Exception) -> None:
        """Re-create rollout ``index`` under its name and bundle, rebuild the weight-transfer group with every
        engine (a collective group cannot lose a member) and push the current weights to all of them."""
        self._count_restart("rollout", f"{self.prefix}rollout-{index}", err)
        ray.kill(self.rollouts[index])
        self.rollouts[index] = retry_name(lambda: self._rollout(index, self.base_path))
        ray.get(self.rollouts[index].ready.remote())
        if self.weights is not None:
            self.weights.rollouts = self.rollouts
            self.weights.connect(*self._rank0_address())
            self.weights.push(self.version)
        self.faults.record({f"{self.prefix}rollout-{index}": self.rollouts[index]})

    def _restart_scorer(self, index: int, err: Exception) -> None:
        """Re-create scorer ``index``; its call (a chunk of completions) is then scored again."""
        self._count_restart("scorer", f"{self.prefix}reward-{index}", err)
        ray.kill(self.scorers[index])
        self.scorers[index] = retry_name(lambda: self._scorer(index))
        self.faults.record({f"{self.prefix}reward-{index}": self.scorers[index]})

    def _supervised(self, role: str, actors: list, send, indices: list[int], point: str) -> list:
        """``send(actor, i)`` for each index; an actor that dies is re-created and its call re-issued (the same
        call with the same seed: the re-issued prompts sample what the lost ones would have)."""
        self.faults.at(point)
        refs = {i: send(actors[i], i) for i in indices}
        results = {}
        for i in indices:
            while i not in results:
                try:
                    results[i] = ray.get(refs[i])
                except ray.exceptions.RayActorError as err:
                    (self._restart_rollout if role == "rollout" else self._restart_scorer)(i, err)
                    refs[i] = send(actors[i], i)
        return [results[i] for i in indices]

    def restart_learners(self, model_path: str) -> None:
        """Re-create the learner ranks from ``model_path`` (the last checkpoint, or the base): a dead rank takes its
        FSDP group with it. The engines, scorers, reward models and the reference actor stay; the new rank 0 forms
        a new weight-transfer group with the engines (the caller loads the checkpoint's state and pushes)."""
        for learner in self.learners:
            ray.kill(learner)
        for i, engine in enumerate(self.rollouts):  # dead, or stuck in the dead rank's broadcast: a new one
            try:
                ray.get(engine.ready.remote(), timeout=30)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                ray.kill(engine)
                self.rollouts[i] = retry_name(lambda i=i: self._rollout(i, self.base_path))
        ray.get([engine.ready.remote() for engine in self.rollouts])
        self.learners = self._learners(model_path, self.base_path, *self.learner_args)
        try:
            if self.weights is not None:
                self.weights.learners, self.weights.rollouts = self.learners, self.rollouts
                self.weights.connect(*self._rank0_address())
            self.faults.record(self._named())
        except ray.exceptions.RayActorError as err:
            raise LearnerLost(f"a learner rank died while the ranks restarted ({type(err).__name__})") from err

    def check_rollouts(self) -> None:
        """Re-create any rollout engine that died between calls (before a weight push needs all of them)."""
        for i, worker in enumerate(self.rollouts):
            try:
                ray.get(worker.ready.remote(), timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                self._restart_rollout(i, err)

    def fault_metrics(self) -> dict[str, int]:
        return {f"faults/{role}_restarts": n for role, n in self.restarts.items()}

    def _rank0_address(self) -> tuple[str, int]:
        """A free port on learner rank 0's node: rendezvous of its process groups."""
        return ray.get(free_address.options(scheduling_strategy=self.placement.learner_slot(0)).remote())

    def _rollout(self, index: int, model_path: str):
        cfg = self.cfg
        return RolloutWorker.options(
            name=f"{self.prefix}rollout-{index}",
            **actor_options(cfg, self.placement, "rollout", index),
            runtime_env={"env_vars": rollout_env(cfg)},
        ).remote(
            model_path,
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_prompt_len + cfg.model.max_response_len,
            seed=cfg.rollout.seed + index,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            kv_cache_gb=cfg.rollout.kv_cache_gb,
            tensor_parallel_size=max(1, cfg.rollout.gpus_per_worker),
            enforce_eager=cfg.rollout.enforce_eager,
            weight_sync=weight_sync_backend(cfg),
            trust_remote_code=cfg.model.trust_remote_code,
            sleep_mode=cfg.cluster.placement == "colocated" and cfg.rollout.gpus_per_worker > 0,
        )

    def _reward_model(self, name: str, spec):
        from actors.reward_model import RewardModelServer

        return RewardModelServer.options(
            name=f"{self.prefix}rm-{name}",
            num_cpus=spec.cpus,
            num_gpus=spec.gpus,
            runtime_env={"env_vars": actor_env()},
        ).remote(spec.path, batch_size=spec.batch_size, device="cuda" if spec.gpus else "cpu")

    def _reference(self):
        """The frozen base model as an actor of its own (``learner.reference: actor``), batched like the learner."""
        from actors.reference import ReferenceWorker

        lc = self.cfg.learner
        return ReferenceWorker.options(
            name=f"{self.prefix}reference-0",
            num_cpus=lc.reference_cpus,
            num_gpus=lc.reference_gpus,
            resources=lc.resources or None,
            runtime_env={"env_vars": actor_env()},
        ).remote(
            self.base_path,
            dtype="bfloat16" if lc.mixed_precision == "bf16" else "float32",
            device="cuda" if lc.reference_gpus else "cpu",
            threads=int(lc.reference_cpus),
            micro_batch_size=lc.micro_batch_size,
            micro_batch_tokens=lc.micro_batch_tokens,
            share_prompts=lc.share_prompts,
            trust_remote_code=self.cfg.model.trust_remote_code,
        )

    def _learners(self, model_path: str, base_path: str, optimizer_steps: int, reference: bool) -> list:
        cfg = self.cfg
        addr, port = self._rank0_address()
        specs = [
            LearnerSpec(
                rank=rank,
                world_size=cfg.learner.world_size,
                master_addr=addr,
                master_port=port,
                model_path=model_path,
                base_path=base_path,
                config=cfg.learner,
                optimizer_steps=optimizer_steps,
                reference=reference,
                head=self.head,
                reward_score=cfg.rm.score if self.head == "reward" else "head",
                seed=cfg.seed,
                trust_remote_code=cfg.model.trust_remote_code,
            )
            for rank in range(cfg.learner.world_size)
        ]
        return [
            retry_name(
                lambda spec=spec: PolicyLearner.options(
                    name=f"{self.prefix}learner-{spec.rank}",
                    **actor_options(cfg, self.placement, "learner", spec.rank),
                    runtime_env={"env_vars": actor_env()},
                ).remote(spec)
            )
            for spec in specs
        ]

    # ------------------------------------------------------------------ calls
    def generate(
        self, prompt_ids: list[np.ndarray], group_size: int, sampling: SamplingSpec, *, seed: str | None = None
    ) -> Rollouts:
        """``group_size`` completions per prompt, split over the rollout workers. ``seed``: a key (e.g. the
        prompt stream's position) from which every worker's generator is re-seeded first, so the samples are a
        function of (run seed, key, prompts) and not of what the engines sampled before."""
        if self.weights is not None:
            self.weights.wake_engines()  # colocated engines sleep from a train() to the next push
        parts = _split(len(prompt_ids), len(self.rollouts))
        workers = self.rollouts[: len(parts)]
        seeds = [None if seed is None else derive_seed(self.cfg.rollout.seed, i, seed) for i in range(len(parts))]

        def send(worker, i):
            return worker.generate.remote(prompt_ids[parts[i]], group_size, sampling, seeds[i])

        return Rollouts.concat(self._supervised("rollout", self.rollouts, send, list(range(len(workers))), "generate"))

    def score(self, texts: list[str], answers: list[str], info: list[RowInfo] | None = None) -> Scores:
        """Rewards of ``texts`` against ``answers``; ``info``: each row's target language and task."""
        parts = _split(len(texts), len(self.scorers))
        scorers = self.scorers[: len(parts)]
        info = info or [RowInfo()] * len(texts)
        model_refs = {name: self._model_scores(name, texts, info) for name in self.reward_models}

        def send(scorer, i):
            return scorer.score.remote(texts[parts[i]], answers[parts[i]], info[parts[i]])

        scores = Scores.concat(self._supervised("scorer", self.scorers, send, list(range(len(scorers))), "score"))
        return add_model_rewards(self.cfg, scores, {name: ray.get(ref) for name, ref in model_refs.items()}, info)

    def _model_scores(self, name: str, texts: list[str], info: list[RowInfo]):
        """Reward model ``name`` on its span of each completion, after the (templated) prompt."""
        spec = self.cfg.reward.models[name]
        prompts = [row.prompt for row in info]  # templated by the stage, as the model saw them
        return self.reward_models[name].score.remote(
            prompts, [judged_span(t, spec.span, self.cfg.data.think_opened) for t in texts]
        )

    def train(self, batch: TrainBatch, objective: Objective) -> dict[str, float]:
        ref = ray.put(batch)
        if self.weights is not None:
            self.weights.sleep_engines()
        self.faults.at("train")
        calls = [learner.train_step.remote(ref, objective) for learner in self.learners]
        return self._learner_results(calls)[0]

    def _learner_results(self, calls: list) -> list:
        """The learner ranks' results; a dead rank is ``LearnerLost`` (its group cannot go on without it)."""
        pending = list(calls)
        while pending:  # as they finish: the survivors of a dead rank would wait for it in a collective
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except ray.exceptions.RayActorError as err:
                raise LearnerLost(f"a learner rank died ({type(err).__name__})") from err
        return ray.get(calls)

    def reference_logprobs(self, rollouts: Rollouts, temperature: float) -> np.ndarray | None:
        """The reference actor's (B, R) logprobs of every response token of ``rollouts`` (None without one). A dead
        reference actor is re-created (it holds nothing but the frozen base model) and asked again."""
        if self.reference is None:
            return None
        batch = TrainBatch.from_rollouts(rollouts, np.zeros(rollouts.num_completions, dtype=np.float32))
        self.faults.at("reference")
        while True:
            try:
                return ray.get(self.reference.logprobs.remote(batch, temperature))
            except ray.exceptions.RayActorError as err:
                self._count_restart("reference", f"{self.prefix}reference-0", err)
                ray.kill(self.reference)
                self.reference = retry_name(self._reference)
                self.faults.record({f"{self.prefix}reference-0": self.reference})

    def sync_weights(self, version: int, probe: TrainBatch, *, check: bool = True) -> dict[str, float]:
        """Push the learner's weights to every engine, then (``check``) prove it on ``probe``'s first rows."""
        if self.weights is None:
            raise RuntimeError("this fleet has no rollout engines or no learners: there is nothing to sync")
        self.faults.at("sync")
        self.check_rollouts()
        try:
            pushed = self.weights.push(version)
        except ray.exceptions.RayActorError as err:
            raise LearnerLost(f"a learner rank or engine died during the weight push ({type(err).__name__})") from err
        self.version = version
        return (pushed | self.weights.check(probe)) if check else pushed

    def start_sync_check(self, probe: TrainBatch) -> PendingCheck:
        """The sync check of the weights the learner and the engines hold now, on ``probe``'s first rows, sent to
        run beside what they do next (``WeightSync.start_check``); ``sync_check_result`` collects it."""
        if self.weights is None:
            raise RuntimeError("this fleet has no rollout engines or no learners: there is nothing to check")
        return self.weights.start_check(probe)

    def sync_check_result(self, pending: PendingCheck) -> dict[str, float]:
        """A started check's gap; nothing where an engine died on the way (the engine re-created in its place took
        a push of its own), a ``LearnerLost`` where a rank did."""
        try:
            return pending.result()
        except ray.exceptions.RayActorError:
            try:
                ray.get(pending.learners)
            except ray.exceptions.RayActorError as err:
                raise LearnerLost(f"a learner rank died during a sync check ({type(err).__name__})") from err
            return {}

    def rewards(self, batch: TrainBatch) -> np.ndarray:
        """A reward-model fleet's (``head="reward"``) reward per row of ``batch`` (B,); every rank joins the forward."""
        ref = ray.put(batch)
        return ray.get([learner.compute_rewards.remote(ref) for learner in self.learners])[0]

    def logprobs(self, batch: TrainBatch, temperature: float = 1.0) -> np.ndarray:
        """The learner's per-response-token logprobs of ``batch`` (B, R); every rank joins the forward."""
        ref = ray.put(batch)
        calls = [learner.compute_logprobs.remote(ref, temperature=temperature) for learner in self.learners]
        return ray.get(calls)[0]

    def load_model(self, model_path: str) -> float:
        """Reload every engine's weights from the checkpoint at ``model_path`` (of the architecture and tokenizer
        the engines were started with); returns the slowest engine's seconds."""
        if self.learners:
            raise RuntimeError("load_model is for a fleet without learners: a trained fleet's engines take pushes")
        seconds = ray.get([worker.load_model.remote(str(model_path)) for worker in self.rollouts])
        self.version = 0
        self.base_path = str(model_path)  # what an engine re-created after a fault starts from
        return max(seconds, default=0.0)

    def save_checkpoint(self, path: str) -> None:
        self._learner_results([learner.save_checkpoint.remote(path) for learner in self.learners])

    def load_checkpoint(self, path: str) -> None:
        self._learner_results([learner.load_checkpoint.remote(path) for learner in self.learners])

    def shutdown(self) -> None:
        reference = [self.reference] if self.reference is not None else []
        servers = [actor for _, actor in self.servers.values()]
        for actor in [*self.rollouts, *self.scorers, *self.learners, *servers, *reference]:
            ray.kill(actor)
        self.placement.remove()
        # A fleet started next (the next stage) reuses the names: wait until they are released.
        wait_released([*self._named(), *(f"{self.prefix}rm-{n}" for n in self.servers)])
