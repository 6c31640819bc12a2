"""``r1ray data``: countdown generation (deterministic, solvable, disjoint held-out file) and the gsm8k / MATH
converters on small files written here in the Hugging Face layouts (Parquet and JSONL)."""

import argparse
import json
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.data.prepare import add_parser, last_boxed, prepare, run
from cluster.data.tasks import load_examples
from cluster.errors import DataError
from rewards.countdown import countdown_answer, countdown_reward


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# ---- countdown ----------------------------------------------------------------------------------------


def test_countdown_is_deterministic_per_seed(tmp_path):
    first, again, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    prepare("countdown", first, n=50, seed=3)
    prepare("countdown", again, n=50, seed=3)
    prepare("countdown", other, n=50, seed=4)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()


@pytest.mark.parametrize(("count", "max_number"), [(2, 99), (3, 99), (4, 99), (5, 20), (6, 99), (3, 5)])
def test_every_countdown_row_is_solvable_by_its_solution(tmp_path, count, max_number):
    out = tmp_path / "cd.jsonl"
    summary = prepare("countdown", out, n=150, numbers=count, max_number=max_number)
    rows = _read(out)
    assert summary == {"task": "countdown", "path": str(out), "rows": 150, "skipped": 0, "skip_reasons": []}
    assert len(rows) == 150 and len({row["id"] for row in rows}) == 150
    for row in rows:
        numbers, target = row["numbers"], row["target"]
        assert len(numbers) == count and all(1 <= x <= max_number for x in numbers)
        assert 1 <= target <= 999 and row["task"] == "countdown"
        assert row["answer"] == countdown_answer(target, numbers)
        assert row["prompt"] == (
            f"Using the numbers {numbers}, create an equation that equals {target}. Use + - * / and each number once."
        )
        assert countdown_reward("<answer>" + row["solution"] + "</answer>", row["answer"]) == 1.0, row


def test_countdown_problems_are_distinct_and_the_held_out_file_shares_none(tmp_path):
    out = tmp_path / "sets" / "countdown.jsonl"
    # A small problem space (two numbers up to 12), so the draws collide often.
    summary = prepare("countdown", out, n=120, eval_n=40, numbers=2, max_number=12)
    eval_path = tmp_path / "sets" / "countdown.eval.jsonl"
    assert summary["eval_path"] == str(eval_path) and summary["eval_rows"] == 40
    train, held_out = _read(out), _read(eval_path)
    assert (len(train), len(held_out)) == (120, 40)

    def keys(rows):
        return {(tuple(sorted(row["numbers"])), row["target"]) for row in rows}

    assert len(keys(train)) == 120 and len(keys(held_out)) == 40
    assert keys(train).isdisjoint(keys(held_out))
    assert all(countdown_reward(f"<answer>{row['solution']}</answer>", row["answer"]) == 1.0 for row in held_out)


def test_countdown_held_out_file_does_not_change_with_n(tmp_path):
    prepare("countdown", tmp_path / "small.jsonl", n=10, eval_n=20, eval_out=tmp_path / "e1.jsonl")
    prepare("countdown", tmp_path / "large.jsonl", n=200, eval_n=20, eval_out=tmp_path / "e2.jsonl")
    assert (tmp_path / "e1.jsonl").read_bytes() == (tmp_path / "e2.jsonl").read_bytes()


def test_countdown_rows_load_as_r1ray_examples(tmp_path):
    out = tmp_path / "cd.jsonl"
    prepare("countdown", out, n=5)
    examples = load_examples(str(out), "prompt", "answer")
    assert [e.answer for e in examples] == [row["answer"] for row in _read(out)]


def test_too_few_distinct_countdown_problems_is_a_data_error(tmp_path):
    # Two numbers up to 1 make only two problems: [1, 1] -> 2 and [1, 1] -> 1.
    with pytest.raises(DataError, match="found only 2 of 5 distinct problems"):
        prepare("countdown", tmp_path / "cd.jsonl", n=5, numbers=2, max_number=1)
    assert not (tmp_path / "cd.jsonl").exists()


def test_countdown_rejects_an_unsupported_number_count(tmp_path):
    with pytest.raises(DataError, match="numbers must be 2 to 6"):
        prepare("countdown", tmp_path / "cd.jsonl", numbers=7)


# ---- gsm8k --------------------------------------------------------------------------------------------

GSM8K_TRAIN = [
    {"question": "Natalia sold 48 clips and half as many more. How many?", "answer": "48/2 = <<48/2=24>>24\n#### 72"},
    {"question": "A big sum?", "answer": "1000 + 234 = 1234\n#### 1,234 "},
    {"question": "No final answer here.", "answer": "It is 5."},
    {"question": "", "answer": "#### 3"},
]


def _gsm8k_folder(root):
    _write_parquet(root / "main" / "train-00000-of-00001.parquet", GSM8K_TRAIN)
    _write_parquet(root / "main" / "test-00000-of-00001.parquet", [{"question": "Test?", "answer": "#### 9"}])
    _write_parquet(root / "socratic" / "train-00000-of-00001.parquet", [{"question": "Other?", "answer": "#### 1"}])
    return root


def test_gsm8k_from_a_local_parquet_folder(tmp_path):
    source = _gsm8k_folder(tmp_path / "gsm8k")
    out = tmp_path / "out" / "gsm8k.jsonl"
    summary = prepare("gsm8k", out, source=str(source))
    rows = _read(out)
    assert [row["answer"] for row in rows] == ["72", "1234"]
    assert rows[0] == {
        "id": "gsm8k-train-0",
        "prompt": GSM8K_TRAIN[0]["question"],
        "answer": "72",
        "task": "gsm8k",
        "solution": "48/2 = <<48/2=24>>24",
        "source": str(source / "main" / "train-00000-of-00001.parquet"),
    }
    assert rows[1]["id"] == "gsm8k-train-1"
    assert summary["rows"] == 2 and summary["skipped"] == 2
    train_file = source / "main" / "train-00000-of-00001.parquet"
    assert summary["skip_reasons"][0] == f"data file {train_file}, row 3: 'answer' does not end with '#### <number>'"
    assert summary["skip_reasons"][1].startswith(
        f"data file {train_file}, row 4: missing or empty text column(s) ['question']"
    )


def test_gsm8k_local_split_and_config_pick_the_files(tmp_path):
    source = _gsm8k_folder(tmp_path / "gsm8k")
    prepare("gsm8k", tmp_path / "test.jsonl", source=str(source), split="test")
    assert [row["prompt"] for row in _read(tmp_path / "test.jsonl")] == ["Test?"]
    prepare("gsm8k", tmp_path / "socratic.jsonl", source=str(source), config="socratic")
    assert [row["prompt"] for row in _read(tmp_path / "socratic.jsonl")] == ["Other?"]


def test_a_folder_without_files_named_after_the_split_uses_all_of_them(tmp_path):
    _write_jsonl(tmp_path / "src" / "part1.jsonl", [{"question": "A?", "answer": "#### 1"}])
    _write_jsonl(tmp_path / "src" / "part2.jsonl", [{"question": "B?", "answer": "#### 2"}])
    prepare("gsm8k", tmp_path / "out.jsonl", source=str(tmp_path / "src"))
    assert [row["answer"] for row in _read(tmp_path / "out.jsonl")] == ["1", "2"]


def test_limit_caps_the_rows_written(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [{"question": f"Q{i}?", "answer": f"#### {i}"} for i in range(10)])
    summary = prepare("gsm8k", tmp_path / "out.jsonl", source=str(tmp_path / "train.jsonl"), limit=3)
    assert summary["rows"] == 3 and [row["answer"] for row in _read(tmp_path / "out.jsonl")] == ["0", "1", "2"]


def test_missing_source_is_a_data_error(tmp_path):
    missing = tmp_path / "nowhere" / "gsm8k"
    with pytest.raises(DataError, match=f"data source not found: {missing}"):
        prepare("gsm8k", tmp_path / "out.jsonl", source=str(missing))


def test_source_with_no_usable_rows_is_a_data_error_naming_file_and_line(tmp_path):
    source = tmp_path / "train.jsonl"
    _write_jsonl(source, [{"question": "Q?", "answer": "no marker"}, {"text": "wrong columns"}])
    with pytest.raises(DataError) as err:
        prepare("gsm8k", tmp_path / "out.jsonl", source=str(source))
    message = str(err.value)
    assert "\n" not in message and "no usable rows (all 2 rows unusable" in message
    assert f"first: data file {source}, line 1: 'answer' does not end with '#### <number>'" in message
    assert not (tmp_path / "out.jsonl").exists()


def test_invalid_jsonl_is_a_data_error_naming_the_line(tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_text('{"question": "Q?", "answer": "#### 1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not valid JSON"):
        prepare("gsm8k", tmp_path / "out.jsonl", source=str(source))


def test_a_hub_name_goes_to_datasets_load_dataset(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "someone/missing":
            raise FileNotFoundError("Dataset 'someone/missing' doesn't exist on the Hub\nmore detail")
        return [{"question": "Q?", "answer": "#### 4"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    prepare("gsm8k", tmp_path / "out.jsonl")
    assert calls == [("openai/gsm8k", "main", "train")]
    assert _read(tmp_path / "out.jsonl")[0]["source"] == "openai/gsm8k"
    with pytest.raises(DataError, match=r"someone/missing: not a local path.*doesn't exist on the Hub$"):
        prepare("gsm8k", tmp_path / "out.jsonl", source="someone/missing", split="test")


# ---- MATH ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "boxed"),
    [
        (r"So $x = \boxed{5}$.", "5"),
        (r"Half: $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"First \boxed{1}, then \boxed{2}.", "2"),
        (r"The set is \boxed{\{1, 2\}}.", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        (r"\boxed {x^{2}}", "x^{2}"),
        (r"\boxed{3} and an unclosed \boxed{4", "3"),
        ("no box at all", None),
    ],
)
def test_last_boxed(solution, boxed):
    assert last_boxed(solution) == boxed


MATH_ROWS = [
    {"problem": "What is $1/2$?", "solution": r"It is $\boxed{\frac{1}{2}}$.", "level": "Level 1", "type": "Algebra"},
    {"problem": "Count.", "solution": r"Many $\boxed{1,234}$.", "level": "Level 2", "type": "Counting & Probability"},
    {"problem": "No box.", "solution": "The answer is 3.", "level": "Level 3", "type": "Algebra"},
]


def test_math_from_parquet_in_the_competition_math_layout(tmp_path):
    _write_parquet(tmp_path / "math" / "data" / "train-00000-of-00001.parquet", MATH_ROWS)
    _write_parquet(tmp_path / "math" / "data" / "test-00000-of-00001.parquet", MATH_ROWS[:1])
    out = tmp_path / "math.jsonl"
    summary = prepare("math", out, source=str(tmp_path / "math"))
    rows = _read(out)
    assert [row["answer"] for row in rows] == [r"\frac{1}{2}", "1,234"]
    assert rows[0] | {"source": None} == {
        "id": "math-train-0",
        "prompt": "What is $1/2$?",
        "answer": r"\frac{1}{2}",
        "task": "math",
        "solution": MATH_ROWS[0]["solution"],
        "level": "Level 1",
        "subject": "Algebra",
        "source": None,
    }
    assert summary["skipped"] == 1 and "row 3: 'solution' has no \\boxed{...}" in summary["skip_reasons"][0]


def test_math500_jsonl_answer_column_wins(tmp_path):
    rows = [
        {"problem": "P1", "solution": r"\boxed{2}", "answer": "\\frac{3}{4}", "subject": "Geometry", "level": 4},
        {"problem": "P2", "solution": "no box, but an answer", "answer": 7, "subject": "Algebra", "level": 2},
        {"problem": "P3", "answer": ""},
    ]
    _write_jsonl(tmp_path / "MATH-500" / "test.jsonl", rows)
    out = tmp_path / "math500.jsonl"
    summary = prepare("math", out, source=str(tmp_path / "MATH-500"), split="test")
    written = _read(out)
    assert [(r["answer"], r["subject"], r["level"]) for r in written] == [
        ("\\frac{3}{4}", "Geometry", 4),
        ("7", "Algebra", 2),
    ]
    assert summary["skipped"] == 1 and "line 3: no 'answer' or 'solution' column" in summary["skip_reasons"][0]


def test_unknown_kind_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'aime'"):
        prepare("aime", tmp_path / "out.jsonl")


# ---- the command line ---------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_countdown_writes_the_files(tmp_path, capsys):
    out = tmp_path / "data" / "countdown.jsonl"
    args = _parse(["data", "countdown", "--out", str(out), "--n", "20", "--numbers", "4", "--eval-n", "5"])
    assert run(args) == 0
    eval_path = tmp_path / "data" / "countdown.eval.jsonl"
    assert capsys.readouterr().out == f"wrote 20 rows to {out} and 5 held-out rows to {eval_path} (task countdown)\n"
    assert len(_read(out)) == 20 and all(len(row["numbers"]) == 4 for row in _read(out))


def test_cli_gsm8k_reports_skipped_rows(tmp_path, capsys):
    source = _gsm8k_folder(tmp_path / "gsm8k")
    out = tmp_path / "gsm8k.jsonl"
    assert run(_parse(["data", "gsm8k", "--out", str(out), "--source", str(source), "--limit", "5"])) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote 2 rows to {out} (task gsm8k; skipped 2 unusable rows, first: ")
    assert line.count("\n") == 1


def test_cli_rejects_bad_countdown_options():
    with pytest.raises(SystemExit):
        _parse(["data", "countdown", "--out", "x.jsonl", "--numbers", "7"])
    with pytest.raises(SystemExit):
        _parse(["data", "countdown", "--out", "x.jsonl", "--n", "0"])


def test_addition_rows_are_worked_sft_rows_outside_the_held_out_set(tmp_path):
    from cluster.data.tasks import AdditionTask

    out = tmp_path / "cold.jsonl"
    summary = prepare("addition", out, n=50, seed=3, digits=2, eval_size=20)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["rows"] == len(rows) == 50 and len({r["prompt"] for r in rows}) == 50
    held_out = {ex.prompt for ex in AdditionTask(digits=2, seed=3, eval_size=20).eval_examples()}
    assert not held_out & {r["prompt"] for r in rows}
    for r in rows:
        a, b = map(int, r["prompt"].rstrip("=").split("+"))
        assert r["answer"] == str(a + b) and r["response"].endswith(f"<answer>{a + b}</answer>")
    assert prepare("addition", tmp_path / "again.jsonl", n=50, seed=3, digits=2, eval_size=20)["rows"] == 50
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()
