"""The pure parts of the R1 recipe's stages: SFT rows and batches, sampling filters, the eval report."""

import json
from math import comb

import numpy as np
import pytest

from cluster.config import RunConfig
from cluster.data.builtin_model import build_tokenizer
from cluster.data.filters import has_code_fence, has_repetition_loop, longest_paragraph
from cluster.data.sft_data import SFTRow, epoch_batches, load_sft_rows, sft_batch
from cluster.data.tasks import Example
from cluster.errors import DataError
from cluster.payloads import Rollouts, Scores
from cluster.runtime.fleet import add_model_rewards
from cluster.stages.benchmark import build_report
from cluster.stages.sample import failed_filters, select
from rewards.language import detect_language
from rewards.registry import RowInfo, WeightedReward
from rewards.tags import judged_span


def _cfg(**sections) -> RunConfig:
    return RunConfig.model_validate({"model": {"max_prompt_len": 16, "max_response_len": 40}, **sections})


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


# ---------------------------------------------------------------- SFT rows
def test_sft_rows_mask_the_prompt_and_end_with_eos(tmp_path):
    tok = build_tokenizer()
    path = _jsonl(tmp_path / "a.jsonl", [{"prompt": "12+34=", "response": "<think></think><answer>46</answer>"}])
    (row,), skipped = load_sft_rows(path, _cfg(), tok)
    assert skipped == 0
    assert tok.decode(row.prompt_ids) == "12+34="
    assert row.response_ids[-1] == tok.eos_token_id
    assert tok.decode(row.response_ids[:-1]) == "<think></think><answer>46</answer>"
    batch = sft_batch([row])
    assert batch.prompt_lens[0] == len(row.prompt_ids) and batch.response_lens[0] == len(row.response_ids)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "1+1="}, "missing column(s) ['response']"),
        ({"prompt": "1+1=", "response": ""}, "'response' must be non-empty text"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "the last message must be the assistant's"),
        ({"messages": "hi"}, "must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "chat template"),
        ("[1, 2]", "expected an object"),
        ("{not json", "line 2: not valid JSON"),
    ],
)
def test_bad_sft_rows_name_file_and_line(tmp_path, row, message):
    good = {"prompt": "1+1=", "response": "2"}
    path = _jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError) as err:
        load_sft_rows(path, _cfg(), build_tokenizer())
    assert message in str(err.value) and "bad.jsonl" in str(err.value)


def test_overlong_sft_rows_follow_data_overlong(tmp_path):
    tok = build_tokenizer()
    long = {"prompt": "1+1=", "response": "9" * 60}
    path = _jsonl(tmp_path / "a.jsonl", [{"prompt": "1+1=", "response": "2"}, long])
    rows, skipped = load_sft_rows(path, _cfg(), tok)
    assert (len(rows), skipped) == (1, 1)
    with pytest.raises(DataError, match="line 2"):
        load_sft_rows(path, _cfg(data={"overlong": "error"}), tok)
    rows, _ = load_sft_rows(path, _cfg(data={"overlong": "truncate"}), tok)
    assert len(rows[1].response_ids) == 40


def test_epoch_batches_are_deterministic_full_and_bucketed():
    rows = [SFTRow(prompt_ids=np.ones(2, np.int64), response_ids=np.ones(n, np.int64)) for n in range(1, 101)]
    a = epoch_batches(rows, 10, seed=0, epoch=0, bucket=True)
    assert a == epoch_batches(rows, 10, seed=0, epoch=0, bucket=True)
    assert a != epoch_batches(rows, 10, seed=0, epoch=1, bucket=True)
    assert len(a) == 10 and sorted(i for b in a for i in b) == list(range(100))
    spread = np.mean([np.ptp([rows[i].length for i in b]) for b in a])
    plain = epoch_batches(rows, 10, seed=0, epoch=0, bucket=False)
    assert spread < np.mean([np.ptp([rows[i].length for i in b]) for b in plain]) / 3
    assert len(epoch_batches(rows[:25], 10, seed=0, epoch=0, bucket=False)) == 2  # the short batch is dropped


# ---------------------------------------------------------------- filters and selection
def test_filters():
    assert has_repetition_loop("x" + "12345678;" * 3)
    assert not has_repetition_loop("12345678;" * 2 + "abc")
    assert not has_repetition_loop("<think>7+5+0=12;4+8+1=13;3+2+1=06</think><answer>632</answer>")
    assert has_code_fence("see ```python\nx\n```") and not has_code_fence("no fences")
    assert longest_paragraph("ab\n\nabcd\n\nx") == 4


def _rollouts(texts, lengths, finish, k):
    n = len(texts)
    return Rollouts(
        group_size=k,
        prompt_ids=[np.array([1], np.int32)] * (n // k),
        tokens=np.zeros((n, 1), np.int32),
        lengths=np.array(lengths, np.int32),
        logprobs=None,
        texts=texts,
        finish_reasons=finish,
        policy_version=0,
    )


def test_select_keeps_the_shortest_passing_samples_and_counts_each_filter():
    cfg = _cfg(sample={"keep_per_prompt": 1, "min_language": 0.5})
    good_long, good_short = "<think>one two</think><answer>7</answer>", "<think>ab</think><answer>7</answer>"
    texts = [good_long, good_short, "<think>x</think><answer>8</answer>", "<answer>7</answer>", "```" + good_short]
    texts += ["<think>один два</think><answer>7</answer>", good_short, good_short]
    exact = np.array([1, 1, 0, 1, 1, 1, 1, 1], np.float32)
    fmt = np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    scores = Scores(total=exact + fmt, components={"exact": exact, "format": fmt})
    finish = ["stop"] * 6 + ["length", "stop"]
    rollouts = _rollouts(texts, [9, 5, 5, 3, 8, 6, 4, 5], finish, k=4)
    examples = [Example(prompt="p0", answer="7", id="a"), Example(prompt="p1", answer="7", id="b")]
    kept, counts = select(cfg, examples, rollouts, scores, seed=0)
    assert [(r["id"], r["response"], r["length"]) for r in kept] == [("a", good_short, 5), ("b", good_short, 5)]
    assert kept[0]["rewards"] == {"exact": 1.0, "format": 1.0}
    assert counts["sampled"] == 8 and counts["kept"] == 2 and counts["passed"] == 3
    assert counts["failed_correct"] == 1 and counts["failed_format"] == 1 and counts["failed_code_fence"] == 1
    assert counts["failed_language"] >= 1 and counts["failed_finished"] == 1
    assert failed_filters(cfg, good_short, 5, "stop", {"exact": 1.0, "format": 1.0}, "en") == []


def test_pairs_output_pits_each_prompts_kept_answers_against_its_distinct_wrong_ones():
    cfg = _cfg(sample={"output": "pairs", "keep_per_prompt": 2, "require_format": False})
    right, right_long = "<think></think><answer>abc</answer>", "<think>ab</think><answer>abc</answer>"
    texts = [right, "<think></think><answer>abd</answer>", "<answer>abd</answer>", "xbc", right_long, "abe"]
    texts += ["<answer>q</answer>"] * 3 + ["<answer>r</answer>"] * 3  # prompt b: nothing right, no pair
    exact = np.array([1, 0, 0, 0, 1, 0] + [0] * 6, np.float32)
    fmt = np.ones(12, np.float32)
    scores = Scores(total=exact, components={"exact": exact, "format": fmt})
    rollouts = _rollouts(texts, [4, 4, 3, 2, 6, 2] + [2] * 6, ["stop"] * 12, k=6)
    examples = [Example(prompt="(abc)=", answer="abc", id="a", task="echo"), Example(prompt="(q)=", answer="x", id="b")]
    pairs, counts = select(cfg, examples, rollouts, scores, seed=0)
    # the answer span is what the pair holds; "abd" twice is one rejected text; two pairs at most per prompt
    assert [(p["id"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("a", "(abc)=", "abc", "abd"),
        ("a", "(abc)=", "abc", "xbc"),
    ]
    assert pairs[0]["task"] == "echo" and counts["kept"] == 2 and counts["prompts_with_kept"] == 1
    whole = _cfg(sample={"output": "pairs", "keep_per_prompt": 4, "require_format": False, "pair_span": "response"})
    pairs, _ = select(whole, examples, rollouts, scores, seed=0)
    chosen = [p["chosen"] for p in pairs]
    assert chosen == [right, right_long] * 2 and len({p["rejected"] for p in pairs}) == 4
    # with require_correct off a wrong completion passes the filters, but it is never a chosen answer
    loose = _cfg(sample={"output": "pairs", "keep_per_prompt": 4, "require_format": False, "require_correct": False})
    pairs, _ = select(loose, examples, rollouts, scores, seed=0)
    assert {p["chosen"] for p in pairs} == {"abc"} and all(p["rejected"] != "abc" for p in pairs)
    # span `final`: the answers in an empty chain of thought; an empty answer is still no rejected text
    texts[3] = "<think>x</think><answer> </answer>"
    rollouts = _rollouts(texts, [4, 4, 3, 2, 6, 2] + [2] * 6, ["stop"] * 12, k=6)
    final = _cfg(sample={"output": "pairs", "keep_per_prompt": 4, "require_format": False, "pair_span": "final"})
    pairs, _ = select(final, examples, rollouts, scores, seed=0)
    assert {p["chosen"] for p in pairs} == {right}
    assert [p["rejected"] for p in pairs] == ["<think></think><answer>abd</answer>", "<think></think>abe"]


# ---------------------------------------------------------------- eval report
def test_report_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    k = 6
    problems = []
    for i in range(30):
        answers = rng.choice(["1", "2", "0.5", "1/2", None], size=k).tolist()
        samples = [
            {
                "text": f"<answer>{a}</answer>",
                "extracted": a,
                "correct": a in ("0.5", "1/2") if i % 2 else a == "1",
                "length": int(rng.integers(1, 50)),
                "finish_reason": "length" if rng.random() < 0.2 else "stop",
                "format": 1.0,
                "language": 1.0,
            }
            for a in answers
        ]
        problems.append({"id": str(i), "answer": "x", "samples": samples, "greedy": samples[0]})

    def same(i, a, b):  # the accuracy reward's equivalence: 0.5 == 1/2
        return {a, b} == {"0.5", "1/2"}

    report = build_report(problems, same)
    table = [[s["correct"] for s in p["samples"]] for p in problems]
    assert report["pass@1"] == pytest.approx(np.mean(table))
    for n in (1, 2, 4, 6):
        direct = np.mean([1 - comb(k - sum(r), n) / comb(k, n) for r in table])
        assert report["pass@k"][str(n)] == pytest.approx(direct)
    votes = []
    for p in problems:
        groups: dict[str, list] = {}
        for s in p["samples"]:
            a = s["extracted"]
            if a is not None:
                groups.setdefault("half" if a in ("0.5", "1/2") else a, []).append(s)
        if not groups:
            votes.append(False)
            continue
        best = max(len(g) for g in groups.values())
        first = next(
            s
            for s in p["samples"]
            if s["extracted"] is not None
            and len(groups["half" if s["extracted"] in ("0.5", "1/2") else s["extracted"]]) == best
        )
        votes.append(first["correct"])
    assert report["cons@6"] == pytest.approx(np.mean(votes))
    samples = [s for p in problems for s in p["samples"]]
    assert report["truncation_rate"] == pytest.approx(np.mean([s["finish_reason"] == "length" for s in samples]))
    right = [s["length"] for s in samples if s["correct"]]
    assert report["length_correct"] == pytest.approx(np.mean(right))
    assert report["greedy_accuracy"] == pytest.approx(np.mean([p["samples"][0]["correct"] for p in problems]))


# ---------------------------------------------------------------- rewards by task and language
def test_rewards_apply_to_their_tasks_and_language_per_row():
    reward = WeightedReward({"exact": 1.0, "language": 0.5}, only={"exact": ["math"]})
    text = "<think>ein zwei</think><answer>4</answer>"
    assert reward(text, "4", RowInfo(task="math"))[1] == {"exact": 1.0, "language": 1.0}
    assert reward(text, "4", RowInfo(task="general"))[1]["exact"] == 0.0
    assert reward("<think>один два</think><answer>4</answer>", "4", RowInfo(language="ru", task="math"))[0] == 1.5
    assert detect_language("Сколько будет два плюс два?") == "ru" and detect_language("12+34=") == "en"


def test_reward_models_judge_their_span_and_their_tasks():
    assert judged_span("<think>work</think><answer>done</answer>", "answer") == "done"
    assert judged_span("<think>work</think>summary", "answer") == "summary"
    assert judged_span("<think>work</think>summary", "response") == "<think>work</think>summary"
    assert judged_span("<think>work</think><answer>done</answer>", "final") == "<think></think><answer>done</answer>"
    assert judged_span("w</think><answer>a</answer><answer>b</answer>", "final") == "<think></think><answer>b</answer>"
    assert judged_span("<think>work</think>summary", "final") == "<think></think>summary"
    assert judged_span("no tags", "final") == "<think></think>no tags"
    assert judged_span("work</think><answer>a</answer>", "final", think_opened=True) == "</think><answer>a</answer>"
    cfg = _cfg(
        reward={
            "weights": {"exact": 1.0, "helpful": 0.5},
            "models": {"helpful": {"path": "/rm"}},
            "only": {"helpful": ["general"]},
        }
    )
    assert cfg.reward.rule_weights == {"exact": 1.0}
    scores = Scores(total=np.array([1.0, 0.0], np.float32), components={"exact": np.array([1.0, 0.0], np.float32)})
    info = [RowInfo(task="math"), RowInfo(task="general")]
    out = add_model_rewards(cfg, scores, {"helpful": np.array([3.0, 2.0])}, info)
    assert out.components["helpful"].tolist() == [0.0, 2.0] and out.total.tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- chat templates
OPENS_THINK = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)
PLAIN_CHAT = OPENS_THINK.replace("<think>\n", "")


def _chat_model(tmp_path, template: str):
    from cluster.data.builtin_model import save_random_model

    path = save_random_model(tmp_path / "m")
    tok = build_tokenizer()
    tok.chat_template = template
    tok.save_pretrained(path)
    return path


def test_chat_template_formats_prompts_with_a_system_turn():
    from cluster.data.prompts import PromptFormat

    tok = build_tokenizer()
    tok.chat_template = PLAIN_CHAT
    cfg = _cfg(data={"template": "chat", "system_prompt": "be brief"})
    assert PromptFormat(cfg, tok).text("1+1=") == "<|system|>be brief<|user|>1+1=<|assistant|>"
    with pytest.raises(DataError, match="no chat template"):
        PromptFormat(cfg, build_tokenizer())


@pytest.mark.parametrize(("template", "opens"), [(OPENS_THINK, True), (PLAIN_CHAT, False)])
def test_validate_catches_a_chat_template_that_opens_think(tmp_path, capsys, template, opens):
    from cluster.cli import main

    model = _chat_model(tmp_path, template)
    capsys.readouterr()  # the model's save progress bar
    base = ["validate", "--set", f"model.path={model}", "--set", "data.template=chat"]
    wrong, right = f"data.chat_opens_think={str(not opens).lower()}", f"data.chat_opens_think={str(opens).lower()}"
    assert main([*base, "--set", wrong]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"set data.chat_opens_think: {str(opens).lower()}" in err[0]
    assert main([*base, "--set", right]) == 0
    assert (
        RunConfig.model_validate({"data": {"template": "chat", "chat_opens_think": opens}}).data.think_opened is opens
    )


def test_a_fresh_run_never_moves_aside_the_folder_its_model_is_in(tmp_path):
    from cluster.stages.common import open_run

    ckpt = tmp_path / "demo" / "checkpoints" / "step-4"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    cfg = _cfg(output_dir=str(tmp_path), name="demo", model={"path": str(ckpt)})
    with pytest.raises(DataError, match="give the run another name, e.g. --set name=demo-next"):
        open_run(cfg, resume=False)
    assert ckpt.is_dir()


def test_sft_responses_continue_a_thought_the_template_opened(tmp_path):
    tok = build_tokenizer()
    path = _jsonl(tmp_path / "a.jsonl", [{"prompt": "1+2=", "response": "<think>1+2+0=03</think><answer>3</answer>"}])
    (row,), _ = load_sft_rows(
        path, _cfg(model={"max_prompt_len": 512, "max_response_len": 40}, data={"template": "r1zero"}), tok
    )
    assert tok.decode(row.response_ids[:-1]) == "1+2+0=03</think><answer>3</answer>"


def test_a_row_with_an_unknown_language_is_one_line(tmp_path):
    from cluster.data.tasks import load_examples

    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "answer": "1", "language": "english"}])
    with pytest.raises(DataError, match="line 1: unknown language 'english'"):
        load_examples(path, "prompt", "answer")
