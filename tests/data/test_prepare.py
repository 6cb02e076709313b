"""gptlab prepare: token files equal direct encoding (tiktoken / the char tokenizer), splits, sampler, errors."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptlab.data.corpus import iter_documents, plan_pieces, read_piece
from gptlab.data.encoders import token_dtype
from gptlab.data.prep import prepare
from gptlab.data.prepared import PreparedData, TokenFile
from gptlab.errors import GptlabError
from gptlab.tokenizer import CharTokenizer, gpt2_tokenizer

EOT = 50256
# Text that exercises the cut rule: Unicode letters and spaces (NBSP, ideographic space), CRLF,
# tabs, runs of spaces, contractions, digits, and the text of a special token (ordinary text here).
MIXED = (
    "Caf\u00e9 na\u00efve \u00a0co\u00f6perate\u3000\u65e5\u672c\u8a9e \r\n\tIt's   we'll 12345 6.7 "
    "<|endoftext|> \u00c5ngstr\u00f6m\u2003 emoji \U0001f600\U0001f600  end.\n\n"
)


def stream(directory) -> np.ndarray:
    data = PreparedData(directory)
    return np.concatenate([data.train.tokens, data.val.tokens]).astype(np.int64)


def joined(parts: list[list[int]], eot: int) -> list[int]:
    out: list[int] = []
    for i, ids in enumerate(parts):
        if i:
            out.append(eot)
        out.extend(ids)
    return out


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(MIXED * 40, encoding="utf-8")
    return path


def test_gpt2_two_sources_equal_tiktoken_joined_by_eot(tmp_path, shared_data, small_file, tiktoken_gpt2):
    out = tmp_path / "out"
    meta = prepare(["the-verdict", small_file], out, workers=2, chunk_bytes=2000)
    verdict = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    small = small_file.read_bytes().decode("utf-8")
    expected = joined([tiktoken_gpt2.encode_ordinary(verdict), tiktoken_gpt2.encode_ordinary(small)], EOT)
    assert stream(out).tolist() == expected
    assert meta["pieces"] > 2  # the texts really were cut
    assert meta["tokens"] == len(expected)
    assert meta["train"]["tokens"] == int(len(expected) * 0.9)
    assert meta["val"]["tokens"] == len(expected) - int(len(expected) * 0.9)
    assert (meta["dtype"], meta["n_vocab"], meta["eot_id"]) == ("uint16", 50257, EOT)
    assert meta["tokenizer"]["name"] == "gpt2" and "file" not in meta["tokenizer"]
    assert not (out / "tokenizer.json").exists()
    assert meta["documents"] == 2 and meta["val_fraction"] == 0.1
    sources = meta["sources"]
    assert sources[0]["sha256"] == hashlib.sha256((shared_data / "the-verdict.txt").read_bytes()).hexdigest()
    assert sources[1]["sha256"] == hashlib.sha256(small_file.read_bytes()).hexdigest()
    assert sources[1]["bytes"] == sources[1]["bytes_used"] == small_file.stat().st_size
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    # File sizes are the token counts in uint16.
    assert (out / "train.bin").stat().st_size == 2 * meta["train"]["tokens"]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_verdict_token_count_is_gpt2s(tmp_path):
    meta = prepare("the-verdict", tmp_path / "o", workers=1, val_fraction=0.0)
    assert meta["tokens"] == 5145  # GPT-2's count for the-verdict (data README)
    assert meta["val"]["tokens"] == 0 and len(PreparedData(tmp_path / "o").val) == 0


def test_own_encoder_and_in_process_equal_tiktoken(tmp_path, small_file, tiktoken_gpt2):
    meta = prepare(small_file, tmp_path / "o", workers=1, chunk_bytes=700, use_tiktoken=False)
    assert meta["encoder"] == "gptlab" and meta["pieces"] > 5
    assert stream(tmp_path / "o").tolist() == tiktoken_gpt2.encode_ordinary(small_file.read_bytes().decode("utf-8"))


def test_char_tokenizer_built_from_data_and_saved(tmp_path, shared_data, small_file):
    out = tmp_path / "out"
    meta = prepare(["the-verdict", small_file], out, tokenizer="char", workers=2, chunk_bytes=1500)
    texts = [(shared_data / "the-verdict.txt").read_text(encoding="utf-8"), small_file.read_bytes().decode("utf-8")]
    ref = CharTokenizer.from_text(texts)  # the library's own char tokenizer over all the text
    assert stream(out).tolist() == joined([ref.encode_ordinary(t) for t in texts], ref.eot_id)
    saved = PreparedData(out).tokenizer()
    assert isinstance(saved, CharTokenizer) and saved.chars == ref.chars
    assert meta["tokenizer"]["file"] == "tokenizer.json" and meta["encoder"] == "char"
    assert meta["n_vocab"] == len(ref.chars) + 1 and meta["eot_id"] == len(ref.chars)


def test_tokenizer_file_is_copied(tmp_path, small_file):
    tok = CharTokenizer.from_text(small_file.read_bytes().decode("utf-8") + "xyz")
    tok.save(tmp_path / "mytok.json")
    out = tmp_path / "out"
    prepare(small_file, out, tokenizer=str(tmp_path / "mytok.json"), workers=1)
    assert PreparedData(out).tokenizer().chars == tok.chars
    assert stream(out).tolist() == tok.encode_ordinary(small_file.read_bytes().decode("utf-8"))


def test_character_outside_a_given_vocabulary(tmp_path):
    CharTokenizer("abc ").save(tmp_path / "tok.json")
    (tmp_path / "t.txt").write_text("abc cab abd")
    with pytest.raises(GptlabError, match=r"t.txt \(bytes 0-11\): character 'd' is not in this character vocabulary"):
        prepare(tmp_path / "t.txt", tmp_path / "o", tokenizer=str(tmp_path / "tok.json"), workers=1)


def test_uint32_for_big_vocabularies(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    # A character vocabulary of 70,000 code points (skipping surrogates), so ids pass 65,535.
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c <= 0xDFFF)
    tok = CharTokenizer(chars)
    text = "".join(chars[i] for i in range(0, len(chars), 997)) + chars[-1]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    meta = prepare(tmp_path / "t.txt", tmp_path / "o", tokenizer=tok, workers=1)
    assert meta["dtype"] == "uint32"
    ids = stream(tmp_path / "o")
    assert ids.tolist() == tok.encode_ordinary(text) and ids.max() > 65535


def test_pieces_cover_the_file_at_safe_cuts(small_file):
    data = small_file.read_bytes()
    pieces = plan_pieces([small_file], chunk_bytes=500)
    assert pieces[0].start == 0 and pieces[-1].end == len(data)
    for a, b in zip(pieces, pieces[1:]):
        assert a.end == b.start
        assert 0x21 <= data[a.end - 1] <= 0x7E and data[a.end : a.end + 1] in (b" ", b"\t", b"\n", b"\r")
    assert "".join(read_piece(p) for p in pieces) == data.decode("utf-8")


_ALPHABET = st.sampled_from(list("ab Z9'.,-!\n\t\r ") + ["\n\n\n", "\r\n\r\n", " \n", "\u00a0", "\u3000", "\u00e9", "\u65e5", "\U0001f600", "'s", "  ", "\u2003"])


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(_ALPHABET, min_size=1, max_size=200), chunk=st.integers(1, 40))
def test_chunked_ids_equal_whole_text_ids(tmp_path_factory, tiktoken_gpt2, parts, chunk):
    text = "".join(parts)
    path = tmp_path_factory.mktemp("h") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    pieces = plan_pieces([path], chunk_bytes=chunk)
    chunked = [i for p in pieces for i in tiktoken_gpt2.encode_ordinary(read_piece(p))]
    assert chunked == tiktoken_gpt2.encode_ordinary(text)


def test_parallel_chunked_equals_whole_on_real_text(tmp_path, shared_data, tiktoken_gpt2):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:150_000] + MIXED * 50
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    meta = prepare(path, tmp_path / "o", workers=2, chunk_bytes=3000)
    assert meta["pieces"] > 40
    assert stream(tmp_path / "o").tolist() == tiktoken_gpt2.encode_ordinary(text)


def test_val_split_is_the_tail(tmp_path, tiktoken_gpt2, shared_data):
    out = tmp_path / "o"
    meta = prepare("the-verdict", out, val_fraction=0.25, workers=2, chunk_bytes=4000)
    ids = tiktoken_gpt2.encode_ordinary((shared_data / "the-verdict.txt").read_text(encoding="utf-8"))
    cut = int(len(ids) * 0.75)
    data = PreparedData(out)
    assert data.train.tokens.tolist() == ids[:cut] and data.val.tokens.tolist() == ids[cut:]
    assert meta["split"].startswith("the joined token stream is cut at int(tokens * (1 - val_fraction))")


def test_max_bytes_and_python_stdlib_documents(tmp_path):
    out = tmp_path / "o"
    meta = prepare("python-stdlib", out, max_bytes=150_000, workers=2)
    docs = list(iter_documents("python-stdlib", max_bytes=150_000))
    tok = gpt2_tokenizer()
    assert stream(out).tolist() == joined([tok.encode_ordinary(d) for d in docs], EOT)
    assert meta["documents"] == len(docs) > 1
    assert 150_000 <= meta["bytes"] < 150_000 + 1000  # cut at the first safe cut after the cap
    assert meta["sources"][0]["files_used"] == len(docs)


# ------------------------------------------------------------------------------------ sampler
@pytest.fixture(scope="module")
def verdict_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict")
    prepare("the-verdict", out, workers=1)
    return out


def test_sample_batch_windows_come_from_the_stream(verdict_dir):
    data = PreparedData(verdict_dir)
    train = data.train.tokens.astype(np.int64)
    x, y = data.sample_batch(6, 16, seed=3)
    assert x.shape == y.shape == (6, 16) and x.dtype == y.dtype == torch.int64
    windows = np.lib.stride_tricks.sliding_window_view(train, 17)
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        assert np.array_equal(row_x[1:], row_y[:-1])  # y is x shifted by one
        full = np.concatenate([row_x, row_y[-1:]])
        assert (windows == full).all(axis=1).any()  # the window is a real stretch of train.bin
    x2, y2 = data.sample_batch(6, 16, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = data.sample_batch(6, 16, seed=4)
    assert not torch.equal(x, x3)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(data.sample_batch(6, 16, generator=g)[0], x)


def test_iter_windows_sequential(verdict_dir):
    data = PreparedData(verdict_dir)
    val = data.val.tokens.astype(np.int64).tolist()
    batches = list(data.iter_windows(32, 20, batch_size=4))
    starts = list(range(0, len(val) - 32, 20))
    assert data.val.num_windows(32, 20) == len(starts) == sum(len(x) for x, _ in batches)
    xs = torch.cat([x for x, _ in batches]).tolist()
    ys = torch.cat([y for _, y in batches]).tolist()
    assert xs == [val[s : s + 32] for s in starts] and ys == [val[s + 1 : s + 33] for s in starts]
    assert len(batches[-1][0]) == (len(starts) - 1) % 4 + 1


def test_block_size_too_big(verdict_dir):
    data = PreparedData(verdict_dir)
    with pytest.raises(GptlabError, match=r"val.bin: has \d+ tokens, but one window of block size 100000"):
        data.sample_batch(1, 100_000, split="val")


def test_missing_and_corrupt_meta(tmp_path, verdict_dir):
    with pytest.raises(GptlabError, match="meta.json: not found"):
        PreparedData(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(GptlabError, match=r"meta.json: corrupt"):
        PreparedData(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "gptlab-prepared", "dtype": "uint16"}))
    with pytest.raises(GptlabError, match=r"meta.json: corrupt, missing or bad field"):
        PreparedData(tmp_path)
    # A truncated token file is named, with its expected size.
    for name in ("meta.json", "train.bin", "val.bin"):
        (tmp_path / name).write_bytes((verdict_dir / name).read_bytes())
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(GptlabError, match=r"train.bin: has 100 bytes, expected"):
        PreparedData(tmp_path)
    with pytest.raises(GptlabError, match="odd.bin: has 3 bytes"):
        (tmp_path / "odd.bin").write_bytes(b"abc")
        TokenFile(tmp_path / "odd.bin", "uint16")


# ------------------------------------------------------------------------------------ errors
def test_non_utf8_names_file_and_offset(tmp_path, tiktoken_gpt2):
    path = tmp_path / "bad.txt"
    raw = b"hello world " * 500 + b"caf\xe9 " + b"more text " * 100
    path.write_bytes(raw)
    with pytest.raises(GptlabError, match=rf"{path}: not UTF-8 text \(byte 6003: invalid continuation byte\).*--errors replace"):
        prepare(path, tmp_path / "o", workers=2, chunk_bytes=1000)
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []  # nothing left behind
    prepare(path, tmp_path / "o", workers=2, chunk_bytes=1000, errors="replace")
    assert stream(tmp_path / "o").tolist() == tiktoken_gpt2.encode_ordinary(raw.decode("utf-8", errors="replace"))


def test_failure_keeps_previous_output_and_leaves_no_temp_files(tmp_path, small_file):
    out = tmp_path / "o"
    prepare(small_file, out, workers=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text \xff\xfe")
    with pytest.raises(GptlabError, match="bad.txt: not UTF-8"):
        prepare([small_file, bad], out, workers=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_write_leaves_no_partial_files(tmp_path, small_file, monkeypatch):
    import gptlab.data.prep as prep_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prep_module, "_split_tail", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare(small_file, tmp_path / "o", workers=1)
    assert list((tmp_path / "o").iterdir()) == []


def test_empty_files(tmp_path, small_file, tiktoken_gpt2):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(GptlabError, match="no text to prepare"):
        prepare(empty, tmp_path / "o")
    meta = prepare([empty, small_file, empty], tmp_path / "o", workers=1)
    assert meta["documents"] == 1  # empty files are no documents (no stray separators)
    assert stream(tmp_path / "o").tolist() == tiktoken_gpt2.encode_ordinary(small_file.read_bytes().decode("utf-8"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": "no-such-set"}, "not a known data set"),
        ({"tokenizer": "nonexistent-tokenizer"}, "unknown tokenizer"),
        ({"tokenizer": "simple"}, "simple"),
        ({"val_fraction": 1.0}, "val fraction"),
        ({"errors": "ignore"}, "errors must be"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"data": "the-verdict", "out_dir": tmp_path / "o"} | kwargs
    with pytest.raises(GptlabError, match=message):
        prepare(args.pop("data"), args.pop("out_dir"), **args)


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(GptlabError, match="not a folder"):
        prepare("the-verdict", tmp_path / "f")


def test_folder_source_each_file_a_document(tmp_path, tiktoken_gpt2):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second doc")
    (folder / "a.txt").write_text("first doc")
    (folder / "sub" / "c.txt").write_text("third doc")
    (folder / ".hidden").write_text("skipped")
    prepare(folder, tmp_path / "o", workers=1, val_fraction=0)
    expected = joined([tiktoken_gpt2.encode_ordinary(t) for t in ("first doc", "second doc", "third doc")], EOT)
    assert stream(tmp_path / "o").tolist() == expected
    assert os.path.exists(tmp_path / "o" / "meta.json")
