"""The data verbs through gptlab.app.main: outputs, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gptlab.app import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gptlab: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_prepare_json_and_info(capsys, tmp_path, shared_data, tiktoken_gpt2):
    out = tmp_path / "verdict"
    code, stdout, _ = run(capsys, "prepare", "--data", "the-verdict", "--out", str(out), "--workers", "2", "--json", "--no-progress")
    assert code == 0
    meta = json.loads(stdout)
    assert meta["tokens"] == 5145 and meta["out"] == str(out)
    ids = tiktoken_gpt2.encode_ordinary((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert train.tolist() == ids[: int(5145 * 0.9)]

    code, stdout, _ = run(capsys, "data", "info", str(out))
    assert code == 0 and "5,145 tokens of gpt2" in stdout and "train.bin 4,630 tokens, val.bin 515 tokens" in stdout
    code, stdout, _ = run(capsys, "data", "info", str(out), "--json")
    assert json.loads(stdout)["train"]["tokens"] == 4630


def test_prepare_text_output_and_char(capsys, tmp_path):
    out = tmp_path / "c"
    code, stdout, _ = run(capsys, "prepare", "--data", "the-verdict", "--tokenizer", "char", "--out", str(out),
                          "--val-fraction", "0.2", "--no-progress")
    assert code == 0
    assert "prepared 20,479 tokens (train 16,383, val 4,096)" in stdout  # one token per character (all ASCII)
    assert (out / "tokenizer.json").is_file()


def test_sample(capsys, tmp_path):
    out = tmp_path / "v"
    assert run(capsys, "prepare", "--data", "the-verdict", "--out", str(out), "--no-progress")[0] == 0
    code, stdout, _ = run(capsys, "data", "sample", str(out), "--block-size", "8", "--batch-size", "3", "--seed", "1", "--json")
    rows = json.loads(stdout)
    assert code == 0 and len(rows) == 3
    for r in rows:
        assert len(r["x"]) == 8 and r["x"][1:] == r["y"][:-1]
    assert json.loads(run(capsys, "data", "sample", str(out), "--block-size", "8", "--batch-size", "3", "--seed", "1", "--json")[1]) == rows


def test_list_and_fetch(capsys, shared_data):
    code, stdout, _ = run(capsys, "data", "list", "--json")
    names = {r["name"]: r for r in json.loads(stdout)}
    assert code == 0 and {"the-verdict", "tinyshakespeare", "sotu", "sms-spam", "instruction-data", "python-stdlib"} <= set(names)
    assert names["sotu"]["cached"] is True
    code, stdout, _ = run(capsys, "data", "fetch", "the-verdict", "sotu", "--offline", "--json")
    assert code == 0 and json.loads(stdout) == {
        "the-verdict": str(shared_data / "the-verdict.txt"), "sotu": str(shared_data / "sotu.txt")}


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["prepare", "--data", "no-such-set", "--out", "{tmp}/o"], "no-such-set: no such file or folder, and not a known data set"),
        (["prepare", "--data", "{tmp}/empty.txt", "--out", "{tmp}/o"], "no text to prepare"),
        (["prepare", "--data", "{tmp}/bad.txt", "--out", "{tmp}/o"], r"bad.txt: not UTF-8 text \(byte 4: invalid start byte\)"),
        (["prepare", "--data", "the-verdict", "--out", "{tmp}/o", "--max-mb", "0"], "--max-mb must be positive"),
        (["prepare", "--data", "the-verdict", "--out", "{tmp}/o", "--val-fraction", "1"], "val fraction must be in"),
        (["prepare", "--data", "the-verdict", "--out", "{tmp}/o", "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
        (["data", "fetch", "nope"], "unknown data set 'nope'"),
        (["data", "info", "{tmp}"], "meta.json: not found"),
        (["data", "sample", "{tmp}/o"], "no such folder"),
    ],
)
def test_errors_are_one_line_exit_2(capsys, tmp_path, argv, pattern):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.txt").write_bytes(b"abc \xff def")
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert re.search(pattern, one_line_error(err))


def test_errors_replace(capsys, tmp_path, tiktoken_gpt2):
    (tmp_path / "bad.txt").write_bytes(b"abc \xff def")
    code, stdout, _ = run(capsys, "prepare", "--data", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "o"),
                          "--errors", "replace", "--val-fraction", "0", "--json", "--no-progress")
    assert code == 0
    assert np.fromfile(tmp_path / "o" / "train.bin", dtype=np.uint16).tolist() == tiktoken_gpt2.encode_ordinary("abc \ufffd def")


def test_python_stdlib_small(capsys, tmp_path):
    code, stdout, _ = run(capsys, "prepare", "--data", "python-stdlib", "--max-mb", "0.1", "--out", str(tmp_path / "o"), "--json", "--no-progress")
    meta = json.loads(stdout)
    assert code == 0 and 100_000 <= meta["bytes"] < 101_000 and meta["documents"] >= 1


def test_help(capsys):
    for argv in (["prepare", "--help"], ["data", "--help"], ["data", "sample", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--val-fraction" in out and "--block-size" in out
