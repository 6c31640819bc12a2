"""Wire payloads check themselves; the builtin task and the data loader behave."""

import json
import random

import numpy as np
import pytest

from cluster.data.tasks import AdditionTask, PromptStream, addition_example, load_examples
from cluster.errors import DataError
from cluster.payloads import LearnerSpec, Rollouts, SampledBatch, SamplingSpec, Scores, TrainBatch


def _rollouts(prompts=((1, 2, 3), (4, 5)), g=2, lengths=(2, 3, 1, 2)):
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), dtype=np.int32)
    for row, n in enumerate(lengths):
        tokens[row, :n] = np.arange(10 + row * 10, 10 + row * 10 + n)
    return Rollouts(
        group_size=g,
        prompt_ids=[np.array(p, dtype=np.int32) for p in prompts],
        tokens=tokens,
        lengths=np.array(lengths, dtype=np.int32),
        logprobs=-np.ones(tokens.shape, dtype=np.float32),
        texts=["t"] * len(lengths),
        finish_reasons=["stop"] * len(lengths),
        policy_version=3,
    )


def test_train_batch_concatenates_prompt_and_completion():
    batch = TrainBatch.from_rollouts(_rollouts(), np.array([1.0, -1.0, 0.5, -0.5]))
    assert batch.input_ids.shape == (4, 6)
    assert batch.input_ids[1].tolist() == [1, 2, 3, 20, 21, 22]
    assert batch.input_ids[2].tolist() == [4, 5, 30, 0, 0, 0]
    assert batch.prompt_lens.tolist() == [3, 3, 2, 2]
    assert batch.response_lens.tolist() == [2, 3, 1, 2]
    assert batch.select(slice(2, 4)).advantages.tolist() == [0.5, -0.5]


def test_rollouts_concat_pads_to_the_widest():
    a, b = _rollouts(lengths=(1, 1, 1, 1)), _rollouts(lengths=(4, 1, 1, 1))
    both = Rollouts.concat([a, b])
    assert both.tokens.shape == (8, 4)
    assert both.num_completions == 8 and len(both.prompt_ids) == 4


@pytest.mark.parametrize(
    "change",
    [
        {"tokens": np.zeros((3, 2), dtype=np.int32)},
        {"lengths": np.zeros(3, dtype=np.int32)},
        {"texts": ["x"]},
        {"logprobs": np.zeros((4, 9), dtype=np.float32)},
    ],
)
def test_rollouts_reject_inconsistent_shapes(change):
    r = _rollouts()
    fields = {k: getattr(r, k) for k in r.__dataclass_fields__} | change
    with pytest.raises(ValueError):
        Rollouts(**fields)


def test_train_batch_rejects_overlong_rows_and_empty_prompts():
    ids = np.zeros((2, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="longer"):
        TrainBatch(input_ids=ids, prompt_lens=np.array([2, 2]), response_lens=np.array([3, 1]), advantages=np.zeros(2))
    with pytest.raises(ValueError, match="prompt token"):
        TrainBatch(input_ids=ids, prompt_lens=np.array([0, 2]), response_lens=np.array([1, 1]), advantages=np.zeros(2))
    with pytest.raises(ValueError, match="advantages"):
        TrainBatch(input_ids=ids, prompt_lens=np.array([1, 1]), response_lens=np.array([1, 1]), advantages=np.zeros(3))


def test_rollouts_select_groups_keeps_each_group_whole():
    r = _rollouts(prompts=((1,), (2,), (3,)), g=2, lengths=(1, 2, 3, 4, 5, 6))
    picked = r.select_groups([2, 0])
    assert [p.tolist() for p in picked.prompt_ids] == [[3], [1]]
    assert picked.lengths.tolist() == [5, 6, 1, 2]
    assert picked.tokens[0, :5].tolist() == r.tokens[4, :5].tolist()
    assert picked.logprobs.shape == picked.tokens.shape and picked.policy_version == 3


def test_scores_select_and_concat():
    s = Scores(total=np.arange(4.0), components={"exact": np.arange(4.0) * 2}, timeouts=1, seconds=2.0)
    part = s.select(slice(1, 3))
    assert part.total.tolist() == [1.0, 2.0] and part.components["exact"].tolist() == [2.0, 4.0]
    assert part.timeouts == 0, "call counters stay with the whole call"
    side_by_side = Scores.concat([s, s])
    assert len(side_by_side) == 8 and side_by_side.timeouts == 2 and side_by_side.seconds == 2.0
    assert Scores.concat([s, s], sequential=True).seconds == 4.0
    with pytest.raises(ValueError, match="component"):
        Scores(total=np.zeros(2), components={"exact": np.zeros(3)})


def test_payloads_are_keyword_only_and_check_themselves():
    r = _rollouts()
    with pytest.raises(TypeError):
        Rollouts(2, r.prompt_ids, r.tokens, r.lengths, None, r.texts, r.finish_reasons, 0)
    with pytest.raises(ValueError, match="scores for"):
        SampledBatch(rollouts=r, scores=Scores(total=np.zeros(3), components={}), prompts_sampled=2, data_position=2)
    no_lp = Rollouts(**{k: getattr(r, k) for k in r.__dataclass_fields__} | {"logprobs": None})
    with pytest.raises(ValueError, match="rollout_logprobs"):
        TrainBatch.from_rollouts(no_lp, np.zeros(4), behaviour="rollout")
    assert TrainBatch.from_rollouts(r, np.zeros(4), behaviour="rollout").select([0, 1]).behaviour == "rollout"
    with pytest.raises(ValueError, match="rank"):
        LearnerSpec(
            rank=2, world_size=2, master_addr="127.0.0.1", master_port=1, model_path="m", base_path="m",
            config=None, optimizer_steps=1,
        )  # fmt: skip


def test_train_batch_sequences_are_unpadded():
    batch = TrainBatch.from_rollouts(_rollouts(), np.zeros(4))
    assert [len(s) for s in batch.sequences()] == [5, 6, 3, 4]


def test_sampling_spec_validates():
    with pytest.raises(ValueError):
        SamplingSpec(top_p=0)
    with pytest.raises(ValueError):
        SamplingSpec(max_tokens=0)


@pytest.mark.parametrize(
    ("a", "b", "solution"),
    [
        (347, 285, "<think>7+5+0=12;4+8+1=13;3+2+1=06</think><answer>632</answer>"),
        (100, 100, "<think>0+0+0=00;0+0+0=00;1+1+0=02</think><answer>200</answer>"),
        (999, 999, "<think>9+9+0=18;9+9+1=19;9+9+1=19</think><answer>1998</answer>"),
    ],
)
def test_addition_chain_of_thought(a, b, solution):
    example = addition_example(a, b, 3)
    assert example.prompt == f"{a}+{b}="
    assert example.solution == solution
    assert example.answer == str(a + b)


def test_held_out_problems_never_train():
    task = AdditionTask(digits=2, seed=1, eval_size=300)
    held_out = {e.prompt for e in task.eval_examples()}
    rng = random.Random(0)
    assert not held_out & {task.sample(rng).prompt for _ in range(3000)}


def test_prompt_stream_is_reproducible_from_its_position():
    task = AdditionTask(digits=3, seed=0, eval_size=10)
    first = PromptStream(None, task, seed=5)
    first.take(7)
    resumed = PromptStream(None, task, seed=5)
    resumed.position = 7
    assert first.take(4) == resumed.take(4)


def test_file_dataset_epochs_cover_every_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"q": f"p{i}", "a": i}) + "\n" for i in range(5)))
    rows = load_examples(str(path), "q", "a")
    stream = PromptStream(rows, None, seed=0)
    assert sorted(e.prompt for e in stream.take(5)) == [f"p{i}" for i in range(5)]
    assert rows[3].answer == "3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "x", "answer": 1}\n', "line 1: missing column"),
        ('{"q": "", "a": 1}\n', "line 1: 'q' must be non-empty text"),
        ('{"q": "x", "a": 1}\n{"q": "y", "a": 2\n', "line 2: not valid JSON"),
        ('{"q": "x", "a": 1}\n\n{"q": 5, "a": 2}\n', "line 3: 'q' must be non-empty text"),
        ('{"q": "x", "a": null}\n', "line 1: 'a' must be text or a number"),
        ("[1, 2]\n", "line 1: expected an object"),
        ("", "has no rows"),
    ],
)
def test_bad_dataset_rows_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        load_examples(str(path), "q", "a")
    assert str(path) in str(err.value)


def test_json_files_as_rows_or_columns(tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text('[{"q": "a", "a": 1}, {"q": "b", "a": 2}]')
    columns = tmp_path / "columns.json"
    columns.write_text('{"q": ["a", "b"], "a": [1, 2]}')
    assert load_examples(str(rows), "q", "a") == load_examples(str(columns), "q", "a")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"q": "a",\n "a": }]')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_examples(str(broken), "q", "a")


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_examples(str(path), "q", "a")


def test_missing_or_unsupported_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_examples(str(tmp_path / "x.jsonl"), "q", "a")
    (tmp_path / "x.csv").write_text("q,a\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_examples(str(tmp_path / "x.csv"), "q", "a")


def test_parquet_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["1+1=", "2+2="], "gold": [2, 4]}), path)
    rows = load_examples(str(path), "question", "gold")
    assert [(r.prompt, r.answer) for r in rows] == [("1+1=", "2"), ("2+2=", "4")]
