"""Prompts from a dataset file: templated, tokenized, and what happens to prompts that do not fit."""

import json

import pytest

from cluster.config import load_config
from cluster.data.builtin_model import build_tokenizer
from cluster.data.prompts import Prompts
from cluster.errors import DataError


def _prompts(tmp_path, overlong: str, prompts: list[str]) -> Prompts:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n" for p in prompts))
    cfg = load_config(
        None,
        [f"data.train={path}", f"data.overlong={overlong}", "model.max_prompt_len=6", "data.eval_size=1"],
    )
    return Prompts(cfg, build_tokenizer())


ROWS = ["1+2=", "11+22=", "111+222=", "1+1=", "2+2=", "3+3=", "4+4=", "5+5=", "6+6=", "7+7=", "8+8="]


def test_skip_leaves_overlong_prompts_out_and_counts_them(tmp_path, capsys):
    prompts = _prompts(tmp_path, "skip", ROWS)
    assert prompts.skipped == 1
    assert "111+222=" not in {ex.prompt for ex in prompts.train.examples}
    assert "left out 1 of 10 prompts" in capsys.readouterr().out
    assert all(len(ids) <= 6 for ids in prompts.encode(prompts.train.examples))


def test_error_names_the_count_and_the_first(tmp_path):
    with pytest.raises(DataError, match=r"1 prompt\(s\) longer than model.max_prompt_len=6 tokens.*111\+222="):
        _prompts(tmp_path, "error", ROWS)


def test_truncate_keeps_the_last_tokens(tmp_path):
    prompts = _prompts(tmp_path, "truncate", ROWS)
    assert prompts.skipped == 0
    ids = prompts.encode([ex for ex in prompts.train.examples if ex.prompt == "111+222="])[0]
    assert len(ids) == 6 and prompts.tokenizer.decode(ids) == "1+222="


def test_nothing_fits_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no prompt fits"):
        _prompts(tmp_path, "skip", ["1234567+1="] * 11)
