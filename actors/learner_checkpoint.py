"""A learner's checkpoint: a Hugging Face export of the policy plus sharded trainer state.

What a checkpoint folder holds (``cluster/stages/checkpoint.py`` names the folder and renames it into place):

- ``model.safetensors``, ``config.json``, ``generation_config.json``, the tokenizer: the policy in Hugging
  Face format (it loads in vLLM and transformers; a reward model's as sequence classification). Rank 0
  writes it, gathering one parameter at a time into CPU memory.
- ``trainer_state/``: the sharded model and optimizer state as a torch.distributed.checkpoint (DCP)
  folder: every rank writes its own shards, none gathers the whole optimizer (on many nodes the folder
  must be on storage they all mount).
- ``trainer_state.pt``: the LR schedule and every rank's RNG state (small; rank 0 writes it).

``load`` also reads the older layout, where ``trainer_state.pt`` held the full optimizer state.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

TRAINER_STATE = "trainer_state.pt"
SHARDED_STATE = "trainer_state"


def save(learner, path: str) -> None:
    """Every rank joins; ``learner`` is an ``actors.learner.LearnerRank``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    out = Path(path)
    full = get_model_state_dict(learner.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if learner.rank == 0:
        _export_hf(learner, out, full)
    del full
    model_state, optim_state = get_state_dict(learner.model, learner.optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(out / SHARDED_STATE))
    rng = [None] * learner.world_size
    dist.all_gather_object(rng, torch.get_rng_state())
    if learner.rank == 0:
        torch.save({"scheduler": learner.scheduler.state_dict(), "rng": rng}, out / TRAINER_STATE)
    dist.barrier()  # the folder is complete on every rank's return


def _export_hf(learner, out: Path, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    config = learner.model.config
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out)
    # vLLM takes the EOS ids from generation_config.json: without it a checkpoint may stop differently.
    generation = getattr(learner.model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(learner.base_path, trust_remote_code=learner.trust_remote_code)
    tokenizer.save_pretrained(out)


def load(learner, path: str) -> None:
    """Model, optimizer, LR schedule and this rank's RNG state from a checkpoint folder (either layout)."""
    folder = Path(path)
    state = torch.load(folder / TRAINER_STATE, weights_only=False)
    if "optimizer" in state:
        _load_full(learner, folder, state["optimizer"])
    else:
        _load_sharded(learner, folder)
    learner.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"][learner.rank])


def _load_sharded(learner, folder: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(learner.model, learner.optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder / SHARDED_STATE))
    set_state_dict(
        learner.model, learner.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def _load_full(learner, folder: Path, optimizer_state: dict) -> None:
    """The older layout: full weights from the HF export, the full optimizer state from trainer_state.pt."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    weights = load_file(folder / "model.safetensors")
    if learner.language_model and learner.model.config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    set_model_state_dict(learner.model, weights, options=opts)
    set_optimizer_state_dict(learner.model, learner.optimizer, optimizer_state, options=opts)
