"""The tokenizer verbs, run in-process: ``train-tokenizer``, ``tokenize``, ``detokenize``."""

from __future__ import annotations

import io
import json

import pytest

from gptlab.app import main
from gptlab.tokenizer import BPETokenizer, load_tokenizer

EOT = "<|endoftext|>"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptlab: error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


# ----------------------------------------------------------------------------- train-tokenizer
def test_train_tokenizer_saves_what_the_library_trains(capsys, tmp_path, shared_data):
    out = tmp_path / "tok.json"
    code, stdout, _ = run(
        capsys, "train-tokenizer", "--data", "the-verdict", "--vocab-size", "500", "--out", str(out), "--json"
    )
    assert code == 0
    summary = json.loads(stdout)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    saved = load_tokenizer(out)
    expected = BPETokenizer.train([text], 500)
    assert saved.mergeable_ranks == expected.mergeable_ranks and saved.special_tokens == {EOT: 499}
    assert summary["vocab_size"] == saved.n_vocab == 500
    n_tokens = len(expected.encode_ordinary(text))
    assert summary["train_tokens"] == n_tokens and summary["train_bytes"] == len(text.encode())
    assert summary["bytes_per_token"] == pytest.approx(len(text.encode()) / n_tokens, abs=1e-4)


def test_train_tokenizer_human_output_and_tiktoken_format(capsys, monkeypatch, tmp_path, shared_data):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    out = tmp_path / "tok.tiktoken"
    code, stdout, _ = run(
        capsys, "train-tokenizer", "--data", "the-verdict", "--data", str(shared_data / "SMSSpamCollection.tsv"),
        "--vocab-size", "700", "--out", str(out), "--format", "tiktoken", "--special", EOT, "<|pad|>",
    )
    assert code == 0
    assert "vocab size 700 (698 ordinary + 2 special)" in stdout and "bytes/token" in stdout
    texts = [(shared_data / n).read_text(encoding="utf-8") for n in ("the-verdict.txt", "SMSSpamCollection.tsv")]
    ours = BPETokenizer.train(texts, 700, special_tokens=[EOT, "<|pad|>"])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # no copy of the file into tiktoken's cache
    ranks = load_tiktoken_bpe(str(out))
    assert ranks == ours.mergeable_ranks
    enc = tiktoken.Encoding("t", pat_str=ours.pattern, mergeable_ranks=ranks, special_tokens=ours.special_tokens)
    assert enc.encode(texts[1]) == ours.encode(texts[1])


def test_train_tokenizer_without_specials_and_into_a_folder(capsys, tmp_path):
    code, stdout, _ = run(capsys, "train-tokenizer", "--data", "the-verdict", "--vocab-size", "300",
                          "--out", str(tmp_path), "--special", "--json")
    assert code == 0
    assert json.loads(stdout)["out"] == str(tmp_path / "tokenizer.json")
    tok = load_tokenizer(tmp_path)
    assert tok.special_tokens == {} and tok.n_vocab == 300 and len(tok.mergeable_ranks) == 300


def test_train_tokenizer_errors_flag(capsys, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(("caf\xe9 au lait, " * 50).encode("latin-1"))
    out = str(tmp_path / "t.json")
    code, _, err = run(capsys, "train-tokenizer", "--data", str(bad), "--vocab-size", "260", "--out", out)
    assert_one_line_error(code, err, str(bad), "--errors replace")
    code, _, _ = run(capsys, "train-tokenizer", "--data", str(bad), "--vocab-size", "260", "--out", out, "--errors", "replace")
    assert code == 0
    tok = load_tokenizer(tmp_path / "t.json")
    assert tok.decode(tok.encode("caf\ufffd")) == "caf\ufffd"


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--data", "the-verdict", "--vocab-size", "100"], ["vocab_size 100", "257"]),
        (["--data", "the-verdict", "--vocab-size", "90000"], ["it can reach"]),
        (["--data", "no-such-file.txt", "--vocab-size", "300"], ["no-such-file.txt"]),
        (["--data", "the-verdict", "--vocab-size", "300", "--pattern", "(oops"], ["pattern"]),
    ],
)
def test_train_tokenizer_bad_input(capsys, tmp_path, args, fragments):
    code, _, err = run(capsys, "train-tokenizer", *args, "--out", str(tmp_path / "t.json"))
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "t.json").exists()


# ----------------------------------------------------------------------------- tokenize / detokenize
def test_tokenize_matches_tiktoken(capsys, tiktoken_gpt2):
    text = "Hello, world! Don't panic: 3.14 naïve 😀"
    code, stdout, _ = run(capsys, "tokenize", text)
    assert code == 0
    assert stdout.strip() == " ".join(map(str, tiktoken_gpt2.encode_ordinary(text)))


def test_tokenize_json_gives_ids_and_token_strings(capsys, tiktoken_gpt2):
    code, stdout, _ = run(capsys, "tokenize", "--json", "Hello, world")
    assert code == 0
    result = json.loads(stdout)
    assert result["ids"] == tiktoken_gpt2.encode("Hello, world") == [15496, 11, 995]
    assert result["tokens"] == ["Hello", ",", " world"]


def test_tokenize_special_tokens(capsys, tiktoken_gpt2):
    text = f"one{EOT}two"
    code, _, err = run(capsys, "tokenize", text)
    assert_one_line_error(code, err, "--allow-special", EOT)
    code, stdout, _ = run(capsys, "tokenize", "--allow-special", text)
    assert code == 0
    assert list(map(int, stdout.split())) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert 50256 in map(int, stdout.split())


def test_tokenize_file_with_trained_tokenizer(capsys, tmp_path, shared_data):
    path = tmp_path / "tok.json"
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tok = BPETokenizer.train(text, 400)
    tok.save(path)
    code, stdout, _ = run(capsys, "tokenize", "--tokenizer", str(path), "--file", str(shared_data / "the-verdict.txt"))
    assert code == 0
    assert list(map(int, stdout.split())) == tok.encode(text)


def test_detokenize_round_trip(capsys, monkeypatch, tiktoken_gpt2):
    text = "Hello, world! naïve 😀"
    ids = tiktoken_gpt2.encode(text)
    code, stdout, _ = run(capsys, "detokenize", *map(str, ids))
    assert code == 0 and stdout == text + "\n"
    code, stdout, _ = run(capsys, "detokenize", "--json", json.dumps(ids))  # a pasted JSON list works too
    assert json.loads(stdout) == {"text": text}
    monkeypatch.setattr("sys.stdin", io.StringIO(" ".join(map(str, ids)) + "\n"))
    code, stdout, _ = run(capsys, "detokenize")
    assert code == 0 and stdout == text + "\n"


@pytest.mark.parametrize(
    "argv,fragments",
    [
        (["detokenize", "15496", "abc"], ["'abc'"]),
        (["detokenize", "50257"], ["50257"]),
        (["tokenize", "--tokenizer", "no-such-tokenizer", "hi"], ["no-such-tokenizer"]),
        (["tokenize", "--file", "no-such-file.txt"], ["no-such-file.txt"]),
    ],
)
def test_tokenize_bad_input(capsys, argv, fragments):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *fragments)


def test_bad_flags_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["tokenize"])  # neither TEXT nor --file
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["train-tokenizer", "--data", "x", "--vocab-size", "many", "--out", "y"])
    assert info.value.code == 2
