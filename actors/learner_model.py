"""How a learner rank joins its process group and builds its sharded model without holding a full copy on GPU,
and the response logits and logprobs a learner rank and the reference actor (``reference.py``) compute alike.

``group_backend`` is the torch.distributed backend of a learner group: ``gloo`` on CPU and
``cpu:gloo,cuda:nccl`` on GPUs, so the small CPU tensors the learner all-reduces (token counts,
metric sums) go through gloo while FSDP2's collectives run on NCCL. ``all_reduce`` refuses a tensor on a
device the group has no backend for (the error NCCL alone would give at the first GPU step), so the
CPU tests catch it.

At world size 1 (without bf16 compute) there is nothing to shard: ``load_sharded`` returns the plain module
(``bare``). Otherwise it is the memory-safe load: rank 0 reads the checkpoint into CPU memory, every rank builds
the model on the meta device, FSDP2 shards it, each rank allocates only its shards on its device, and
``set_model_state_dict(..., broadcast_from_rank0=True)`` streams rank 0's tensors into them one at a time.
Buffers (rotary frequencies are not in the state dict) are broadcast from rank 0 too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from cluster.algo import microbatch
from cluster.algo.logprobs import token_logprobs
from cluster.payloads import TrainBatch

MIXED_BACKEND = "cpu:gloo,cuda:nccl"


def group_backend(device_type: str) -> str:
    """The learner group's backend for ranks on ``device_type`` (``cpu`` or ``cuda``)."""
    if device_type == "cuda":
        return MIXED_BACKEND
    if device_type == "cpu":
        return "gloo"
    raise ValueError(f"learner ranks run on cpu or cuda, not {device_type!r}")


def backend_devices(config: str) -> set[str]:
    """Device types a backend configuration (``dist.get_backend_config()``: ``gloo``, ``nccl``,
    ``cpu:gloo,cuda:nccl``) can run collectives on."""
    devices = set()
    for part in config.replace(" ", "").lower().split(","):
        if ":" in part:
            devices.add(part.split(":", 1)[0])
        elif part == "nccl":
            devices.add("cuda")
        elif part == "gloo":
            devices |= {"cpu", "cuda"}
        elif part:
            raise ValueError(f"unknown backend {part!r} in {config!r}")
    return devices


def check_collective_device(tensor: torch.Tensor, config: str) -> None:
    """Raise if a collective on ``tensor`` would fail in a group with backend configuration ``config``."""
    if tensor.device.type not in backend_devices(config):
        raise RuntimeError(
            f"collective on a {tensor.device.type} tensor in a {config!r} group: no backend serves that device"
        )


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
    """``dist.all_reduce`` over the default group, after checking the group can serve the tensor's device."""
    check_collective_device(tensor, dist.get_backend_config())
    dist.all_reduce(tensor, op=op)


def init_group(device: torch.device, master_addr: str, master_port: int, rank: int, world_size: int) -> None:
    kwargs = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds NCCL to this GPU at once (eager init)
    dist.init_process_group(
        group_backend(device.type),
        init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank,
        world_size=world_size,
        **kwargs,
    )


def shard(model: torch.nn.Module, device: torch.device, world_size: int, bf16_compute: bool) -> None:
    """FSDP2 over every decoder layer and the root (bf16 compute with float32 reductions if asked)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_compute else None
    kwargs = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


BARE_AT_WORLD_SIZE_ONE = True
"""One rank holds the whole model: FSDP2 would only add work (parameter copies in and out of its flat buffers,
DTensor dispatch on every optimizer op) to what plain PyTorch does, so the module stays bare. bf16 compute
still goes through FSDP2's mixed-precision policy (float32 master weights, bf16 compute)."""


def bare(world_size: int, bf16_compute: bool) -> bool:
    """Whether the learner's model stays a plain module (no FSDP2)."""
    return BARE_AT_WORLD_SIZE_ONE and world_size == 1 and not bf16_compute


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers at {model.base_model_prefix}.layers to shard")
    return layers


def load_sharded(
    load_full, build_empty, *, rank: int, device: torch.device, world_size: int, bf16_compute: bool
) -> torch.nn.Module:
    """A sharded model on ``device`` whose weights are rank 0's ``load_full()`` (a model in CPU memory);
    ``build_empty()`` builds the same architecture (called under the meta device on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if bare(world_size, bf16_compute):
        return load_full().to(device)
    full = load_full() if rank == 0 else None
    with torch.device("meta"):
        model = build_empty()
    shard(model, device, world_size, bf16_compute)
    model.to_empty(device=device)
    state = full.state_dict() if full is not None else {}
    set_model_state_dict(
        model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: to_empty left them uninitialised.
    source = dict(full.named_buffers()) if full is not None else {}
    for name, buffer in model.named_buffers():
        if rank == 0:
            buffer.copy_(source[name])
        if world_size > 1:
            check_collective_device(buffer, dist.get_backend_config())
            dist.broadcast(buffer, src=0)
    if full is not None:  # what rank 0 writes into checkpoints: the loaded config, not a rebuilt one
        model.config = full.config
        model.generation_config = getattr(full, "generation_config", None)
    del full, state
    return model


def response_logits(
    model: torch.nn.Module, batch: TrainBatch, device: torch.device, share_prompts: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits predicting each response token of ``batch``, the tokens, and the response mask, all (B, R, ...).
    ``share_prompts``: rows with the same prompt (a GRPO group's G samples) run it through the model once
    (``shared_prompt_logits``) where the model allows it."""
    if share_prompts:
        shared = shared_prompt_logits(model, batch, device)
        if shared is not None:
            return shared
    # Only as wide as this micro-batch's longest sequence: padding columns cost a full forward.
    used = min(batch.input_ids.shape[1], max(2, int((batch.prompt_lens + batch.response_lens).max())))
    ids = torch.tensor(batch.input_ids[:, :used], device=device)
    prompt = torch.tensor(batch.prompt_lens, device=device)
    resp = torch.tensor(batch.response_lens, device=device)
    width = max(1, batch.max_response_len)
    positions = torch.arange(ids.shape[1], device=device)
    attention = (positions[None] < (prompt + resp)[:, None]).long()
    offsets = torch.arange(width, device=device)
    target_pos = (prompt[:, None] + offsets[None]).clamp(max=ids.shape[1] - 1)
    # The LM head sees only the hidden states that predict a response token, row by row: no logits for
    # prompt or padding positions, and no (B, L, V) gather (nor its backward scatter). logits_to_keep
    # first drops the columns before the earliest of them.
    first = int(prompt.min()) - 1
    index = (target_pos - 1 - first)[..., None]

    def response_states(_module, args):
        hidden = args[0]
        return (hidden.gather(1, index.expand(-1, -1, hidden.shape[-1])), *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(response_states)
    try:
        logits = model(input_ids=ids, attention_mask=attention, logits_to_keep=ids.shape[1] - first).logits
    finally:
        handle.remove()
    if logits.shape[:2] != target_pos.shape:
        raise RuntimeError(f"{type(model).__name__} does not apply its output embeddings to the hidden states")
    mask = (offsets[None] < resp[:, None]).float()
    return logits, ids.gather(1, target_pos), mask


def micro_batches(
    batch: TrainBatch, max_rows: int, max_tokens: int | None, share_prompts: bool, group_rows: int = 1
) -> list[np.ndarray]:
    """Each micro-batch's rows (``microbatch.plan``; with ``share_prompts``, the plan that computes fewer tokens
    when micro-batches run their distinct prompts once)."""
    if not share_prompts:
        lengths = batch.prompt_lens + batch.response_lens
        return microbatch.plan(lengths, max_rows=max_rows, max_tokens=max_tokens, group_rows=group_rows)
    owners = microbatch.prompt_owners(batch.input_ids, batch.prompt_lens)
    return microbatch.plan_shared(
        batch.prompt_lens, batch.response_lens, owners, max_rows=max_rows, max_tokens=max_tokens, group_rows=group_rows
    )


SHARING_OFF = "_r1ray_prompt_sharing_off"
"""Set on a model that runs every row whole: its cache is not plain per-layer keys and values (sliding windows,
linear attention...) or its rotary frequencies depend on each forward's positions (dynamic, longrope)."""


def shared_prompt_logits(
    model: torch.nn.Module, batch: TrainBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``response_logits`` with each distinct prompt run once: a forward of the distinct prompts (right-padded)
    keeps their keys and values, which every row of that prompt then attends to in a forward of its response
    tokens (positions continuing its prompt's). The same function of the weights, gradient included (it flows
    into the prompt's forward through the cache); a GRPO group of G samples computes its prompt once instead of
    G times. None where it does not apply: no shared prompt (on a plain module; FSDP2 ranks that agreed to share
    this micro-batch take this path whatever their rows), activation checkpointing (which turns the cache off), a
    model whose cache layers are not plain ``DynamicLayer``s or whose rotary frequencies depend on the
    positions of each forward (dynamic, longrope): properties of the model, the same on every rank."""
    from transformers.cache_utils import DynamicLayer

    if getattr(model, SHARING_OFF, False) or getattr(model, "is_gradient_checkpointing", False):
        return None
    rope = getattr(model.config, "rope_parameters", None) or getattr(model.config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) in ("dynamic", "longrope"):
        setattr(model, SHARING_OFF, True)
        return None
    owner = microbatch.prompt_owners(batch.input_ids, batch.prompt_lens)
    if owner is None:
        # FSDP2 ranks must make the same forward calls (each all-gathers the weights), whatever their rows.
        if not isinstance(model, FSDPModule):
            return None
        owner = np.arange(len(batch))
    firsts = np.unique(owner, return_index=True)[1]
    plen = torch.tensor(batch.prompt_lens[firsts], device=device)
    width = int(plen.max())
    columns = torch.arange(width, device=device)
    pmask = (columns[None] < plen[:, None]).long()
    pids = torch.tensor(batch.input_ids[firsts, :width], device=device) * pmask
    last = (plen - 1)[:, None, None]

    head = model.get_output_embeddings()
    kept: list[torch.Tensor] = []

    def last_prompt_state(_module, args):
        # Keep each prompt's last hidden state; its logits are taken with the responses' (one LM head call).
        hidden = args[0]
        kept.append(hidden.gather(1, last.expand(-1, -1, hidden.shape[-1])))
        return (hidden[:, :0], *args[1:])

    handle = head.register_forward_pre_hook(last_prompt_state)
    try:
        out = model(input_ids=pids, attention_mask=pmask, use_cache=True, logits_to_keep=width)
    finally:
        handle.remove()
    cache = out.past_key_values
    if cache is None or not all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None])):
        setattr(model, SHARING_OFF, True)
        return None
    if len(kept) != 1:
        raise RuntimeError(f"{type(model).__name__} does not apply its output embeddings to the hidden states")
    rows = torch.as_tensor(owner, device=device)
    prompt = torch.tensor(batch.prompt_lens, device=device)
    resp = torch.tensor(batch.response_lens, device=device)
    r = max(1, batch.max_response_len)
    offsets = torch.arange(r, device=device)
    ids = torch.tensor(batch.input_ids, device=device)
    target_pos = (prompt[:, None] + offsets[None]).clamp(max=ids.shape[1] - 1)
    tokens = ids.gather(1, target_pos)
    # Response tokens 0..R-2 predict tokens 1..R-1 (the last one's output would predict past the response). With
    # single-token responses only, one token still goes through (its output unused): the same calls every time.
    cache.batch_select_indices(rows)
    fed = max(1, r - 1)

    def with_first_state(_module, args):
        return (torch.cat([kept[0][rows], args[0][:, : r - 1]], 1), *args[1:])

    handle = head.register_forward_pre_hook(with_first_state)
    try:
        logits = model(
            input_ids=tokens[:, :fed],
            attention_mask=torch.cat([pmask[rows], (offsets[None, :fed] < resp[:, None]).long()], 1),
            position_ids=target_pos[:, :fed],
            past_key_values=cache,
            use_cache=True,
        ).logits
    finally:
        handle.remove()
    if logits.shape[:2] != target_pos.shape:
        raise RuntimeError(f"{type(model).__name__} does not apply its output embeddings to the hidden states")
    mask = (offsets[None] < resp[:, None]).float()
    return logits, tokens, mask


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module,
    micro_batches: list[tuple[np.ndarray, TrainBatch]],
    rows: int,
    temperature: float,
    device: torch.device,
) -> np.ndarray:
    """(rows, R) float32 logprobs of each response token under ``softmax(logits / temperature)`` of ``model``,
    0 on padding; ``micro_batches``: (row indices, micro-batch, share its prompts) covering the batch's rows."""
    width = max((mb.max_response_len for _, mb, _ in micro_batches), default=0)
    out = np.zeros((rows, max(1, width)), dtype=np.float32)
    for index, chunk, share in micro_batches:
        logits, tokens, mask = response_logits(model, chunk, device, share)
        lp = token_logprobs(logits, tokens, temperature) * mask
        out[index, : lp.shape[1]] = lp.float().cpu().numpy()
    return out
