"""Typed configuration of an r1ray run: one pydantic model per component, loaded from YAML.

A run is a YAML file under ``deploy/configs/`` plus ``--set dotted.key=value`` overrides. ``load_config`` turns
any bad input (missing file, bad YAML, unknown key, wrong type, out of range, inconsistent sizes) into a
``ConfigError`` naming the dotted field: the CLI prints one line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from cluster.errors import ConfigError
from cluster.sections import EvalConfig, RMConfig, SampleConfig, Section, SFTConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "deploy" / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant: <think>"
)
TEMPLATES = {"r1zero": R1_ZERO_TEMPLATE, "raw": "{prompt}"}


class ModelConfig(Section):
    path: str = "builtin:tiny-adder"
    """Hugging Face model directory, or ``builtin:tiny-adder`` for the demo model r1ray builds itself."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the rollout engines (the learner keeps float32 weights; see learner.mixed_precision)."""
    max_prompt_len: int = Field(256, ge=1, le=131072)
    """Longest prompt in tokens (after the template); what happens to longer ones is ``data.overlong``."""
    max_response_len: int = Field(48, ge=1, le=131072)
    """Most tokens generated per completion (the one owner of the response length)."""
    trust_remote_code: bool = False
    """Let transformers and vLLM run code shipped with the model."""
    builtin_pretrain_steps: int = Field(500, ge=1)
    """Pre-training steps of the builtin model (a fixed schedule: warm-up, then cosine decay)."""
    builtin_long_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """Share of the builtin model's pre-training answers that work the problem out; the rest answer in
    one short line, so the base rarely thinks and is mostly wrong (what RL has to change)."""
    builtin_long_only_steps: int = Field(350, ge=0)
    """First pre-training steps on worked answers only: the skill, before the mixture makes it rare."""


class DataConfig(Section):
    train: str = "builtin:addition"
    """Training prompts: a local ``.jsonl``/``.json``/``.parquet`` file, or ``builtin:addition``."""
    eval: str | None = None
    """Held-out prompts in the same formats; for builtin tasks, None draws problems disjoint from training."""
    prompt_key: str = "prompt"
    """Column holding the question."""
    answer_key: str = "answer"
    """Column holding the gold answer given to the reward functions."""
    template: str = "raw"
    """``r1zero`` (the DeepSeek-R1-Zero template), ``raw``, ``chat`` (the tokenizer's chat template, the
    question as the user turn), or any string containing ``{prompt}``."""
    system_prompt: str | None = None
    """With ``template: chat``, a system turn before the question."""
    chat_opens_think: bool = False
    """With ``template: chat``: the model's chat template itself opens ``<think>`` for every answer (R1-distill,
    Qwen3), so the ``format`` reward must check the completion as the rest of an opened thought. Checked
    against the tokenizer when a run starts and by ``r1ray validate``."""
    eval_size: int = Field(200, ge=1)
    """Number of held-out problems evaluated."""
    eval_samples: int = Field(4, ge=1)
    """Samples per held-out problem for sampled pass@1 (averaged, as the R1 paper reports it)."""
    digits: int = Field(3, ge=1, le=9)
    """Operand size of the builtin arithmetic task."""
    language: str = "en"
    """Target language of the chain of thought (``language`` reward, ``sample.min_language``, eval's language
    consistency) for rows without a ``language_key`` column; ``auto`` detects it from each prompt's script."""
    language_key: str = "language"
    """Column naming a row's target language (when the file has it)."""
    task_key: str = "task"
    """Column naming a row's task (``reward.only`` applies rewards to some tasks only)."""
    overlong: Literal["error", "skip", "truncate"] = "skip"
    """Prompts longer than ``model.max_prompt_len`` tokens: stop with an error naming the first, leave them
    out (counted and printed, as verl's ``filter_overlong_prompts``), or keep their last tokens."""

    @model_validator(mode="after")
    def _template_has_prompt(self) -> DataConfig:
        if self.template not in TEMPLATES and self.template != "chat" and "{prompt}" not in self.template:
            raise ValueError(f"data.template must be one of {sorted([*TEMPLATES, 'chat'])} or contain '{{prompt}}'")
        if self.template != "chat" and (self.system_prompt is not None or self.chat_opens_think):
            raise ValueError("data.system_prompt and data.chat_opens_think apply to data.template: chat only")
        pairs = (9 * 10 ** (self.digits - 1)) ** 2
        if self.train.startswith("builtin:") and self.eval_size > pairs // 2:
            raise ValueError(
                f"data.eval_size ({self.eval_size}) must leave most of the {pairs} "
                f"{self.digits}-digit problems for training"
            )
        return self

    @model_validator(mode="after")
    def _known_language(self) -> DataConfig:
        from rewards.language import LANGUAGE_SCRIPTS  # pure Python, cheap

        if self.language != "auto" and self.language not in LANGUAGE_SCRIPTS:
            raise ValueError(f"data.language must be 'auto' or one of {sorted(LANGUAGE_SCRIPTS)}")
        return self

    def template_text(self) -> str:
        return TEMPLATES.get(self.template, self.template)

    @property
    def think_opened(self) -> bool:
        """True when the template ends inside ``<think>`` (R1-Zero): completions start mid-thought, and
        the ``format`` reward then checks the completion as the continuation of an opened thought."""
        if self.template == "chat":
            return self.chat_opens_think
        return self.template_text().rstrip().endswith("<think>")


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1)
    """Number of vLLM rollout engines (Ray actors ``rollout-<i>``)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved for each rollout actor."""
    gpus_per_worker: int = Field(0, ge=0)
    """GPUs per rollout engine; the engine uses them with tensor parallelism."""
    resources: dict[str, float] = {}
    """Extra custom Ray resources each rollout worker requests (e.g. ``{rollout: 1}``) to steer node types."""
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    """Sampling temperature of training rollouts and of sampled evaluation (> 0: a group needs distinct samples)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling threshold (keep 1.0 so the engine's logprobs match the learner's)."""
    stop: list[str] = ["</answer>"]
    """Stop strings; the stop string is kept in the output (R1-Zero stops at ``</answer>``)."""
    gpu_memory_utilization: float = Field(0.15, gt=0.0, le=0.95)
    """Share of GPU memory (on CPU: of RAM) vLLM reserves for weights and KV cache."""
    kv_cache_gb: float | None = Field(None, gt=0.0)
    """Each engine's KV cache in GiB (vLLM's ``kv_cache_memory_bytes``). Unset: what ``gpu_memory_utilization``
    leaves, but on CPU, where it is less, room for the 256 sequences vLLM schedules at once at ``max_model_len``
    (vLLM zeroes its cache at start: 0.15 of 24 GiB took seconds per engine; the demo needs < 0.1 GiB). Too
    small only queues sequences, unless one ``max_model_len`` sequence does not fit (vLLM refuses to start)."""
    enforce_eager: bool = True
    """Skip CUDA-graph / compile warm-up; faster start, slower decoding on GPUs."""
    engine_in_actor: bool | None = None
    """Run vLLM's engine core (and, without tensor parallelism, the model) inside the rollout actor's
    process instead of in child processes. ``None``: yes on CPU, where the children's shared-memory
    queues busy-poll after every message and so take cores from the learner between rollouts; no on
    GPUs. With tensor parallelism vLLM still starts one worker process per GPU."""
    seed: int = 0
    """Engine seed; worker ``i`` uses ``seed + i``. Reproducibility comes from it plus request order."""


class RewardModelSpec(Section):
    """A trained reward model (``r1ray rm``) served as a reward: its scalar output is the reward."""

    path: str
    """An ``rm`` stage's checkpoint: a Hugging Face sequence-classification model folder (one output), or a
    language model scored by likelihood (``rm.score: likelihood``; its config says so)."""
    span: Literal["answer", "final", "response"] = "answer"
    """What it judges: the final ``<answer>`` (or the text after ``</think>``; R1's helpfulness, on the summary
    only), ``final``: that answer inside an empty chain of thought (``<think></think><answer>...</answer>``,
    for a likelihood-scored model that knows the format), or the whole ``response`` (R1's harmlessness:
    reasoning included)."""
    batch_size: int = Field(16, ge=1)
    """Texts per forward pass."""
    cpus: float = Field(1.0, gt=0)
    gpus: int = Field(0, ge=0, le=1)


class RewardConfig(Section):
    weights: dict[str, float] = {"exact": 1.0, "format": 0.1}
    """Reward names (see ``rewards.REWARD_NAMES``) or ``module:function`` paths, with their weights.
    ``format`` follows ``data.template``: with a template that opens ``<think>`` it checks the completion
    as the rest of that thought (no need to pick ``format_think_opened`` by hand)."""
    timeout_s: float = Field(5.0, gt=0.0, le=600.0)
    """Hard deadline: first for a chunk of completions, then, if the chunk overruns, per completion and
    reward; a reward that times out or raises scores 0 and is counted."""
    num_scorers: int = Field(1, ge=1)
    """Reward scorer actors (``reward-<i>``), each scoring its share of the batch."""
    accuracy_key: str = "exact"
    """The reward component reported as accuracy and used for evaluation."""
    models: dict[str, RewardModelSpec] = {}
    """Reward models by reward name (each one's weight is in ``weights``), served as Ray actors ``rm-<name>``."""
    only: dict[str, list[str]] = {}
    """Reward name -> the tasks (``data.task_key`` column) it applies to; on other rows it scores 0.
    DeepSeek-R1's last phase: rule rewards for reasoning prompts, reward models for general ones."""

    @property
    def rule_weights(self) -> dict[str, float]:
        """The weights of the rule rewards (what the scorers compute; reward models are served apart)."""
        return {name: w for name, w in self.weights.items() if name not in self.models}

    @model_validator(mode="after")
    def _known_weights(self) -> RewardConfig:
        from rewards.registry import REWARD_NAMES  # pure Python, cheap

        if not self.weights:
            raise ValueError("reward.weights must name at least one reward")
        for name in self.weights:
            if name not in REWARD_NAMES and ":" not in name and name not in self.models:
                raise ValueError(
                    f"reward.weights: unknown reward {name!r}; use one of {list(REWARD_NAMES)}, module:function, "
                    "or a reward model named in reward.models"
                )
        for name in self.models:
            if name in REWARD_NAMES:
                raise ValueError(f"reward.models: {name!r} is a rule reward's name; call the model something else")
            if name not in self.weights:
                raise ValueError(f"reward.models: {name!r} has no weight in reward.weights")
        if self.accuracy_key in self.models:
            raise ValueError(f"reward.accuracy_key {self.accuracy_key!r} must be a rule reward, not a reward model")
        if self.accuracy_key not in self.weights:
            raise ValueError(f"reward.accuracy_key {self.accuracy_key!r} is not one of reward.weights")
        for name in self.only:
            if name not in self.weights and name != "format":
                raise ValueError(f"reward.only: {name!r} is not one of reward.weights")
        return self


class GRPOConfig(Section):
    steps: int = Field(100, ge=1)
    """Number of GRPO steps (one batch of prompts each)."""
    prompts_per_step: int = Field(32, ge=1)
    """Prompts drawn per step."""
    group_size: int = Field(8, ge=2)
    """Completions sampled per prompt (G); advantages are relative within a group."""
    epochs: int = Field(1, ge=1)
    """Passes over each batch (mu in the GRPO paper); above 1 the clipped ratio matters."""
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per pass; the batch is split into this many mini-batches."""
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    """Lower ratio clip (1 - clip_low)."""
    clip_high: float = Field(0.2, ge=0.0)
    """Upper ratio clip (1 + clip_high); DAPO's clip-higher raises it."""
    clip_ratio_c: float | None = Field(3.0, gt=1.0)
    """Dual clip: a token with negative advantage loses at most ``clip_ratio_c * |A|`` however large its
    ratio (None: off). Matters when a batch takes several updates or rollouts are stale."""
    kl_coef: float = Field(0.01, ge=0.0)
    """Weight of the k3 KL penalty to the frozen reference model; 0 skips the reference model."""
    kl_max: float | None = Field(10.0, gt=0.0)
    """Cap on each token's k3 KL term in the loss (None: no cap); a capped token gets no KL gradient.
    k3 grows like exp(ref - lp) (10 at 2.5 nats, ~20000 at 10), so without a cap one token the policy
    has pushed far below the reference can outweigh the whole batch's gradient."""
    loss_agg: Literal["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"] = "seq-mean-token-mean"
    """Loss aggregation: GRPO paper, DAPO, or Dr. GRPO."""
    scale_advantages: bool = True
    """Divide by the group std (GRPO); False gives Dr. GRPO's unscaled advantages."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and draw more prompts to refill the batch."""
    max_sampling_rounds: int = Field(3, ge=1)
    """With dynamic sampling, at most this many generate rounds per step."""
    old_logprobs: Literal["rollout", "learner"] = "rollout"
    """Behaviour-policy logprobs of the clipped ratio when a batch takes several updates: the engine's
    (exactly the sampling distribution, free) or a learner forward before the first update."""
    async_rollouts: bool = False
    """Generate the next batch with the current weights while the learner trains on this one (one step
    off-policy; the engine's logprobs are the behaviour policy of the clipped ratio)."""


class LearnerConfig(Section):
    world_size: int = Field(1, ge=1)
    """Learner ranks (Ray actors ``learner-<rank>``) forming one FSDP2 group."""
    cpus_per_rank: float = Field(1.0, gt=0)
    """CPUs reserved per learner rank."""
    gpus_per_rank: int = Field(0, ge=0, le=1)
    """1 on GPU clusters (NCCL, bf16 possible), 0 on CPU (gloo)."""
    resources: dict[str, float] = {}
    """Extra custom Ray resources per learner rank (e.g. ``{learner: 1}``)."""
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    """Peak AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up optimizer steps."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final LR as a share of the peak for cosine/linear decay."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Max global gradient norm."""
    micro_batch_size: int = Field(64, ge=1)
    """Sequences per forward/backward on one rank; gradients accumulate over micro-batches."""
    micro_batch_tokens: int | None = Field(None, ge=1)
    """Length-bucketed micro-batches (verl's dynamic batch size): rows sorted by length, at most this many padded
    tokens (rows x longest row) and ``micro_batch_size`` rows each; None keeps batch order."""
    share_prompts: bool = True
    """Run each distinct prompt of a micro-batch once (a GRPO group's G samples attend to its cached keys and
    values; the same function of the weights), with the micro-batch plan that computes fewer tokens."""
    activation_checkpointing: bool = False
    """Recompute activations in backward to save memory (no prompt sharing: no cache in training)."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """FSDP2 mixed precision (bf16 compute, fp32 master weights); GPU only."""
    grad_sync: Literal["last", "every"] = "last"
    """When FSDP2 reduce-scatters gradients: ``last`` micro-batch of a mini-batch (fewer collectives; each rank
    holds the unsharded gradient, 4 bytes/parameter, meanwhile) or ``every`` one (a full gradient too big)."""
    reference: Literal["rank", "actor"] = "rank"
    """Where the frozen reference model of the KL term runs. ``rank``: on every learner rank, sharded like the
    policy, its forward part of each train step. ``actor``: one Ray actor of its own (``reference-0``, on
    ``reference_cpus`` / ``reference_gpus``; the whole model must fit its device) that scores each batch right
    after it is sampled and scored (OpenRLHF's separate reference model): the ranks only train, and with
    ``grpo.async_rollouts`` the reference forward of batch N+1 runs while the ranks train on batch N."""
    reference_cpus: float = Field(1.0, gt=0)
    """CPUs reserved for the reference actor (its torch threads on CPU)."""
    reference_gpus: int = Field(0, ge=0, le=1)
    """GPUs of the reference actor (1 on GPU clusters)."""


class ClusterConfig(Section):
    address: str | None = None
    """Ray address to join (``auto``, ``ray://...``); None starts a local cluster unless RAY_ADDRESS is set."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of a locally started cluster (None: all of this machine's, but at least what the run asks for)."""
    dashboard_host: str = "127.0.0.1"
    """Where a locally started dashboard listens; keep loopback unless token auth is on."""
    dashboard_port: int = Field(8265, ge=1, le=65535)
    """Port of a locally started dashboard."""
    max_restarts: int = Field(3, ge=0)
    """Actor deaths a run survives (rollout engines and reward scorers are re-created and their calls re-issued;
    learner ranks are restarted from the last checkpoint); one more stops the run with a clear message."""
    stop_grace_s: float = Field(120.0, gt=0.0)
    """After SIGTERM, how long the current step may take to finish before it is abandoned (a checkpoint is
    written when it finishes in time; the last complete one stays either way)."""
    sync_check_every: int = Field(0, ge=0)
    """Every k-th weight push of an RL run is also proven by a probe (the engines' and the learner's logprobs of
    a few sequences: an extra forward on each side); 0: only the first and the last push. With synchronous
    rollouts every push is proven anyway, for free, by the next step's batch: the learner compares the
    engine's logprob of each sampled token with its own first forward (``rollout/logprob_diff_max``).
    Asynchronous rollouts (sampled with older weights) and ``rollout.top_p`` < 1 (nucleus-renormalised engine
    logprobs) probe every push during the step after it, off its critical path, and the last push at once."""
    weight_sync: Literal["auto", "gloo", "nccl", "ipc"] = "auto"
    """Weight broadcast backend: ``auto`` picks nccl when learners and engines have GPUs of their own, ipc
    (CUDA IPC handles) when they share GPUs (``placement: colocated``), else gloo."""
    placement: Literal["split", "colocated"] = "split"
    """``split``: learner ranks and rollout engines on GPUs of their own. ``colocated``: GPU i holds learner
    rank i and engine i (needs rollout.num_workers = learner.world_size, one GPU each or CPU only); the engine
    sleeps while the learner trains (vLLM sleep mode, level 1) and wakes for the weights (ipc) and rollouts."""


class WandbConfig(Section):
    project: str = Field("r1ray", min_length=1)
    """Weights & Biases project the run is logged to."""
    mode: Literal["online", "offline"] = "offline"
    """``offline`` writes ``<run_dir>/wandb/offline-run-*`` with no network (``wandb sync`` uploads it later)."""


class LoggingConfig(Section):
    wandb: WandbConfig | None = None
    """Also log every metrics.jsonl row and the resolved config to wandb (``pip install -e '.[wandb]'``); None: off."""


class RunConfig(Section):
    name: str = Field("demo", pattern=r"^[A-Za-z0-9._-]+$")
    """Run name; outputs go to ``<output_dir>/<name>/``."""
    output_dir: str = "runs"
    """Folder holding run directories (and the builtin model cache)."""
    seed: int = 0
    """Seed of data order, torch and the engines."""
    eval_every: int = Field(0, ge=0)
    """Evaluate every K steps (0: only before and after training)."""
    checkpoint_every: int = Field(0, ge=0)
    """Checkpoint every K steps (0: only at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest checkpoints kept on disk."""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    grpo: GRPOConfig = GRPOConfig()
    learner: LearnerConfig = LearnerConfig()
    cluster: ClusterConfig = ClusterConfig()
    sft: SFTConfig = SFTConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()
    rm: RMConfig = RMConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _consistent_sizes(self) -> RunConfig:
        batch = self.grpo.prompts_per_step * self.grpo.group_size
        shards = self.grpo.mini_batches * self.learner.world_size
        if batch % shards:
            raise ValueError(
                f"grpo.prompts_per_step * grpo.group_size ({batch}) must be divisible by "
                f"grpo.mini_batches * learner.world_size ({shards})"
            )
        if self.learner.mixed_precision == "bf16" and self.learner.gpus_per_rank == 0:
            raise ValueError("learner.mixed_precision 'bf16' needs learner.gpus_per_rank = 1")
        if self.learner.reference == "actor" and self.learner.gpus_per_rank and not self.learner.reference_gpus:
            raise ValueError(
                "learner.reference 'actor' with GPU learner ranks needs learner.reference_gpus = 1: on CPU the "
                "reference forward of a model trained on GPUs would take longer than the step"
            )
        several = self.grpo.epochs * self.grpo.mini_batches > 1
        engine_old = self.grpo.async_rollouts or (several and self.grpo.old_logprobs == "rollout")
        if self.rollout.top_p < 1 and engine_old:
            raise ValueError(
                "rollout.top_p < 1 with the engine's logprobs as the behaviour policy: vLLM renormalises them "
                "over the nucleus and the learner does not, so every ratio is off; set grpo.old_logprobs: learner "
                "(and grpo.async_rollouts: false) or rollout.top_p: 1"
            )
        if self.cluster.weight_sync == "nccl" and (
            self.learner.gpus_per_rank == 0 or self.rollout.gpus_per_worker == 0
        ):
            raise ValueError("cluster.weight_sync 'nccl' needs GPUs on learners and rollout workers")
        self._check_placement()
        return self

    def _check_placement(self) -> None:
        colocated = self.cluster.placement == "colocated"
        if self.cluster.weight_sync == "ipc" and not (colocated and self.learner.gpus_per_rank):
            raise ValueError("cluster.weight_sync 'ipc' needs cluster.placement 'colocated' on GPUs")
        if not colocated:
            return
        if self.rollout.num_workers != self.learner.world_size:
            raise ValueError(
                f"cluster.placement 'colocated' needs rollout.num_workers ({self.rollout.num_workers}) = "
                f"learner.world_size ({self.learner.world_size}): one engine beside each learner rank"
            )
        if self.rollout.gpus_per_worker != self.learner.gpus_per_rank:
            raise ValueError(
                f"cluster.placement 'colocated' needs rollout.gpus_per_worker ({self.rollout.gpus_per_worker}) = "
                f"learner.gpus_per_rank ({self.learner.gpus_per_rank}): an engine shares its rank's GPU"
            )
        if self.cluster.weight_sync == "nccl":
            raise ValueError("cluster.weight_sync 'nccl' cannot connect two processes on one GPU: use ipc (or auto)")
        if self.grpo.async_rollouts:
            raise ValueError(
                "grpo.async_rollouts needs cluster.placement 'split': a colocated engine sleeps while its rank trains"
            )

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config error: --set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ``("a.b", value)`` with the value read as YAML (numbers, lists, bools)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"config error: --set {text!r}: expected dotted.key=value")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: --set {key}: value is not valid YAML ({err.problem})") from None


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    shown = f"{field}: {msg}" if field and not msg.startswith(field) else msg
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if "input" in first and first["type"] not in ("extra_forbidden", "missing") and field:
        shown += f" (got {first['input']!r})"
    return f"config error: {shown}{extra}"


def load_config_tree(path: str | Path) -> dict[str, Any]:
    """A YAML file's mapping of sections, unvalidated; a missing file or bad YAML is a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config error: file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config error: {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config error: {path} must hold a mapping of sections, not {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (default: the embedded demo), apply ``dotted.key=value`` overrides, validate."""
    tree = load_config_tree(path if path is not None else DEFAULT_CONFIG)
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
