"""The rollout engine's KV cache on CPU: sized to what vLLM schedules at once, not a share of RAM."""

from __future__ import annotations

import os

from actors.rollout import CPU_MAX_NUM_SEQS, kv_cache_bytes
from cluster.data.builtin_model import save_random_model


def test_room_for_every_scheduled_sequence_at_the_longest_length(tmp_path):
    model = str(save_random_model(tmp_path / "m", tie=True))  # 4 layers, 2 KV heads of 32 dims
    per_token = 2 * 4 * 2 * 32  # K and V, every layer, every KV head
    # 48 tokens take one block of 128; float32, or half the bytes in bfloat16
    assert kv_cache_bytes(model, None, 48, "float32", 0.15) == per_token * 4 * CPU_MAX_NUM_SEQS * 128
    assert kv_cache_bytes(model, None, 200, "bfloat16", 0.15) == per_token * 2 * CPU_MAX_NUM_SEQS * 256


def test_an_explicit_size_wins_and_a_run_that_needs_the_ram_share_is_left_to_vllm(tmp_path):
    model = str(save_random_model(tmp_path / "m", tie=True))
    assert kv_cache_bytes(model, 0.25, 48, "float32", 0.15) == 2**28
    # vLLM's share (weights and cache) is smaller than the run's sequences need: vLLM sizes it as before
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert kv_cache_bytes(model, None, 48, "float32", 2**20 / ram) is None


def test_a_model_it_cannot_read_is_left_to_vllm(tmp_path):
    assert kv_cache_bytes(str(tmp_path), None, 48, "float32", 0.15) is None  # no config.json
