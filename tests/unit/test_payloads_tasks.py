"""Wire payloads check themselves; the builtin task and the data loader behave."""

import json
import random

import numpy as np
import pytest

from cluster.payloads import Rollouts, SamplingSpec, TrainBatch
from cluster.tasks import AdditionTask, PromptStream, addition_example, load_examples


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
        TrainBatch(ids, np.array([2, 2]), np.array([3, 1]), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="prompt token"):
        TrainBatch(ids, np.array([0, 2]), np.array([1, 1]), np.zeros(2, dtype=np.float32))
    with pytest.raises(ValueError, match="advantages"):
        TrainBatch(ids, np.array([1, 1]), np.array([1, 1]), np.zeros(3, dtype=np.float32))


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
        ('{"question": "x", "answer": 1}\n', "missing column"),
        ('{"q": "", "a": 1}\n', "row 0"),
    ],
)
def test_bad_dataset_rows_name_the_problem(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
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
