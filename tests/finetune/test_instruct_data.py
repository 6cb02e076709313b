"""Instruction files: JSON and JSONL, bad entries named by index and field, the book's split."""

from __future__ import annotations

import json

import pytest

from gptlab.errors import GptlabError
from gptlab.finetune.instruct.data import load_examples, split_examples


def test_book_data_by_name_and_its_split():
    data = load_examples("instruction-data")
    assert len(data) == 1100
    parts = split_examples(data)
    assert {k: len(v) for k, v in parts.items()} == {"train": 935, "test": 110, "val": 55}
    # The book splits in file order: train first, then test, then validation.
    assert parts["train"][0] is data[0] and parts["test"][0] is data[935] and parts["val"][-1] is data[-1]


def test_seeded_split_is_reproducible_and_a_permutation():
    data = [{"instruction": str(i), "output": "x"} for i in range(100)]
    a, b = split_examples(data, seed=7), split_examples(data, seed=7)
    assert a == b and a != split_examples(data, seed=8)
    assert sorted(int(e["instruction"]) for part in a.values() for e in part) == list(range(100))
    assert [len(a[k]) for k in ("train", "test", "val")] == [85, 10, 5]


def test_jsonl_and_missing_input(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "input": "d", "output": "e"}\n')
    assert load_examples(path) == [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"instruction": "a", "output": "b"}, "expected a JSON list"),
        ([{"instruction": "a", "output": "b"}, {"output": "b"}], "entry 1: field 'instruction' is missing"),
        ([{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a"}], "entry 1: field 'output' is missing"),
        ([{"instruction": "a", "input": 3, "output": "b"}], "entry 0: field 'input' must be a string"),
        ([["a", "b"]], "entry 0: expected an object"),
        ([], "no entries"),
    ],
)
def test_bad_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(GptlabError, match=message) as info:
        load_examples(path)
    assert str(path) in str(info.value)


def test_not_json_and_missing_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[{")
    with pytest.raises(GptlabError, match="not valid JSON"):
        load_examples(path)
    bad_line = tmp_path / "x.jsonl"
    bad_line.write_text('{"instruction": "a", "output": "b"}\nnope\n')
    with pytest.raises(GptlabError, match="line 2"):
        load_examples(bad_line)
    with pytest.raises(GptlabError, match="no such file"):
        load_examples(tmp_path / "missing.json")


def test_output_optional_for_generation(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"instruction": "a"}]))
    assert load_examples(path, require_output=False) == [{"instruction": "a"}]
