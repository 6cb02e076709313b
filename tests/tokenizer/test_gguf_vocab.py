"""GGUF vocabularies turned into tokenizer.json dicts, checked against the models' real Hugging Face tokenizers.

The reference is llama.cpp's test vectors: ``ggml-vocab-NAME.gguf.out`` holds the ids the model's own
Hugging Face tokenizer gives each text of ``.inp``. The converted dict, built into a ``tokenizers``
tokenizer, must reproduce every one of them.

gptlab reads GGUF metadata with its own reader; the ``gguf`` package is only a test tool here, writing the
small files (GGUFWriter) and serving as the reference reader (GGUFReader). Tests that need it skip without
it; the rest (the vectors, the malformed files built byte by byte) still run.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from gptlab.errors import GptlabError
from gptlab.tokenizer import gguf_vocab
from gptlab.tokenizer.gguf_vocab import PRE_TOKENIZERS, read_gguf_metadata, read_gguf_vocab

try:
    import gguf
except ImportError:  # pragma: no cover - gguf is a test-only tool
    gguf = None
needs_gguf = pytest.mark.skipif(gguf is None, reason="needs the gguf package (GGUFWriter/GGUFReader)")
tokenizers = pytest.importorskip("tokenizers")  # the reference engine

# llama.cpp's tests/test-tokenizer-0.cpp splits .inp on this exact string, newlines included: every
# text, even the last, is followed by it (convert_hf_to_gguf_update.py writes text + separator).
SEPARATOR = "\n__ggml_vocab_test__\n"

# name -> the ids add_special_tokens=True puts around "Hello" (BOS for Llama 3 and DeepSeek-LLM only).
VOCABS = {
    "gpt-2": ([], []),
    "llama-bpe": ([128000], []),
    "qwen2": ([], []),
    "qwen35": ([], []),
    "starcoder": ([], []),
    "deepseek-llm": ([100000], []),
}


def read_vectors(folder: Path, name: str) -> list[tuple[str, list[int]]]:
    """The (text, expected ids) pairs of one vocabulary's test vectors."""
    raw = (folder / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    assert raw.endswith(SEPARATOR)
    texts = raw[: -len(SEPARATOR)].split(SEPARATOR)
    lines = (folder / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines), "the .inp and .out files disagree on the number of tests"
    return [(text, [int(tok) for tok in line.split()]) for text, line in zip(texts, lines)]


@pytest.mark.slow  # building a tokenizers tokenizer from 128k tokens and 280k merges takes a while
@pytest.mark.parametrize("name", list(VOCABS))
def test_vectors_match_the_real_tokenizer(shared_data, name):
    folder = shared_data / "llama-vocab"
    tokenizer_json, config = read_gguf_vocab(folder / f"ggml-vocab-{name}.gguf")
    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))

    failures = []
    for k, (text, expected) in enumerate(read_vectors(folder, name)):
        got = tok.encode(text, add_special_tokens=False).ids
        if got != expected:
            failures.append(f"#{k} {text[:40]!r}: expected {expected[:12]}, got {got[:12]}")
    assert not failures, f"{name}: {len(failures)} vectors differ:\n" + "\n".join(failures)

    # Each added token, written in text, encodes to its own GGUF id (tokenizers renumbers added tokens
    # unless the model's vocabulary already holds them at those ids).
    moved = [(added["id"], added["content"]) for added in tokenizer_json["added_tokens"]
             if tok.encode(added["content"], add_special_tokens=False).ids != [added["id"]]]
    assert not moved, f"{name}: added tokens encode to other ids: {moved[:5]}"

    before, after = VOCABS[name]
    plain = tok.encode("Hello", add_special_tokens=False).ids
    assert tok.encode("Hello", add_special_tokens=True).ids == before + plain + after
    assert config["add_bos_token"] is bool(before)
    assert config["bos_token"] is not None and config["eos_token"] is not None
    if name.startswith("qwen"):
        assert config["pad_token"] == "<|endoftext|>" and "<|im_start|>" in config["chat_template"]


def write_gguf(path: Path, model: str = "gpt2", pre: str | None = "gpt-2", merges: tuple[str, ...] = ("a b",),
               big_endian: bool = False, **flags) -> Path:
    """A tiny vocab-only GGUF file: four byte-level letters, one merge, two control tokens, one
    user-defined token and one "[PAD<id>]" filler (as llama.cpp's converter writes them)."""
    if gguf is None:
        pytest.skip("needs the gguf package to write GGUF files")
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, arch="llama", endianess=endian)
    writer.add_tokenizer_model(model)
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(["a", "b", "ab", "Ġ", "<s>", "</s>", "<tool>", "[PAD7]"])
    writer.add_token_types([1, 1, 1, 1, 3, 3, 4, 4])
    writer.add_token_merges(list(merges))
    writer.add_bos_token_id(4)
    writer.add_eos_token_id(5)
    if "add_bos" in flags:
        writer.add_add_bos_token(flags["add_bos"])
    if "add_eos" in flags:
        writer.add_add_eos_token(flags["add_eos"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_sentencepiece_vocabulary_is_refused(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", model="llama", pre=None)
    with pytest.raises(GptlabError) as err:
        read_gguf_vocab(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "'llama'" in message and "SentencePiece" in message and '"gpt2"' in message


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    path = write_gguf(tmp_path / "odd.gguf", pre="mystery-pre")
    with pytest.raises(GptlabError) as err:
        read_gguf_vocab(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "mystery-pre" in message and "llama-bpe" in message and "qwen2" in message


def test_missing_or_broken_file_is_a_gptlab_error(tmp_path):
    with pytest.raises(GptlabError, match="no such GGUF file"):
        read_gguf_vocab(tmp_path / "absent.gguf")
    (tmp_path / "text.gguf").write_text("not a GGUF file at all, only text")
    with pytest.raises(GptlabError, match="not a readable GGUF file"):
        read_gguf_vocab(tmp_path / "text.gguf")
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:60])
    with pytest.raises(GptlabError, match="not a readable GGUF file"):
        read_gguf_vocab(tmp_path / "cut.gguf")


@pytest.mark.parametrize("merge", ["a b c", "a x", "b b"])
def test_bad_merge_is_refused(tmp_path, merge):
    with pytest.raises(GptlabError, match="bad merge"):
        read_gguf_vocab(write_gguf(tmp_path / "merge.gguf", merges=("a b", merge)))


def test_tiny_vocabulary_structure(tmp_path):
    tokenizer_json, config = read_gguf_vocab(write_gguf(tmp_path / "tiny.gguf", add_bos=True))
    model = tokenizer_json["model"]
    assert tokenizer_json["version"] == "1.0" and model["type"] == "BPE"
    assert model["merges"] == [["a", "b"]]
    # Every token sits in the model's vocabulary at its id; control and user-defined ones (not the
    # "[PAD<id>]" filler) are also added tokens, special or not.
    assert model["vocab"] == {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<s>": 4, "</s>": 5, "<tool>": 6, "[PAD7]": 7}
    assert [(t["id"], t["content"], t["special"]) for t in tokenizer_json["added_tokens"]] == [
        (4, "<s>", True), (5, "</s>", True), (6, "<tool>", False)]
    assert config == {"bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "add_bos_token": True,
                      "add_eos_token": False, "chat_template": None}

    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
    assert tok.encode("ab <tool>ab", add_special_tokens=False).ids == [2, 3, 6, 2]
    assert tok.encode("ab", add_special_tokens=True).ids == [4, 2]
    assert tok.decode([2, 3, 0, 1]) == "ab ab"


def test_add_bos_flag_overrides_the_default(tmp_path):
    """llama.cpp's rule: the file's add_bos_token wins over the pre-tokenizer's default."""
    tokenizer_json, config = read_gguf_vocab(write_gguf(tmp_path / "l3.gguf", pre="llama-bpe", add_bos=False))
    assert config["add_bos_token"] is False and tokenizer_json["post_processor"]["type"] == "ByteLevel"
    tokenizer_json, config = read_gguf_vocab(write_gguf(tmp_path / "l3d.gguf", pre="llama-bpe"))
    assert config["add_bos_token"] is True  # Llama 3's default, as llama.cpp applies it
    # Llama 3's own layout: the ByteLevel post-processor (offsets only), then the BOS template.
    assert [p["type"] for p in tokenizer_json["post_processor"]["processors"]] == ["ByteLevel", "TemplateProcessing"]


def test_add_eos_flag_appends_eos(tmp_path):
    tokenizer_json, config = read_gguf_vocab(write_gguf(tmp_path / "eos.gguf", add_bos=True, add_eos=True))
    assert config["add_eos_token"] is True
    tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
    assert tok.encode("ab", add_special_tokens=True).ids == [4, 2, 5]
    assert tok.encode("ab", "b", add_special_tokens=True).ids == [4, 2, 5, 4, 1, 5]


def test_table_entries_build():
    """Every pre-tokenizer in the table is one that the tokenizers library accepts."""
    for name, recipe in PRE_TOKENIZERS.items():
        tokenizer_json = {
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
            "normalizer": recipe["normalizer"], "pre_tokenizer": recipe["pre_tokenizer"],
            "post_processor": recipe["post"], "decoder": recipe["decoder"],
            "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        }
        tok = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json))
        pieces = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str("Hello, y'all 1234\n")]
        assert "".join(pieces) == "Hello,Ġy'allĠ1234Ċ", name  # byte-level text, split but complete


# --- The GGUF metadata reader -------------------------------------------------------------------------


def reference_metadata(path: Path) -> dict[str, Any]:
    """The file's metadata as gguf.GGUFReader gives it (the slow reference gptlab's reader replaced),
    without the header pseudo-fields ("GGUF.version", ...) that the reader adds itself."""
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def metadata_end(path: Path) -> int:
    """Where the metadata section ends, by GGUFReader's account (what follows is padding and tensors)."""
    last = list(gguf.GGUFReader(path).fields.values())[-1]
    return last.offset + sum(int(part.nbytes) for part in last.parts)


def test_every_vocab_file_is_tested(shared_data):
    """The per-file tests below are parametrized by VOCABS: it must name every GGUF file in the folder."""
    names = {f.name.removeprefix("ggml-vocab-").removesuffix(".gguf")
             for f in (shared_data / "llama-vocab").glob("*.gguf")}
    assert names == set(VOCABS)


@needs_gguf
# GGUFReader, the reference, takes 10-27 s on a 128k-token vocabulary: the two smallest files (one
# with a control-token block at the start, one with it at the end) cover every value type in them.
@pytest.mark.parametrize("name", ["gpt-2", "starcoder"])
def test_metadata_and_vocab_match_gguf_reader(shared_data, monkeypatch, name):
    path = shared_data / "llama-vocab" / f"ggml-vocab-{name}.gguf"
    expected = reference_metadata(path)
    got = read_gguf_metadata(path)
    assert list(got) == list(expected)  # same keys, in file order
    for key, value in expected.items():
        assert got[key] == value and type(got[key]) is type(value), key
        if isinstance(value, list) and value:
            assert {type(v) for v in got[key]} == {type(v) for v in value}, key  # e.g. int, not bool or float

    # read_gguf_vocab's output, built from GGUFReader's values (the old code path), is unchanged.
    new = read_gguf_vocab(path)
    monkeypatch.setattr(gguf_vocab, "read_gguf_metadata", lambda _: expected)
    assert read_gguf_vocab(path) == new


@needs_gguf
@pytest.mark.parametrize("big_endian", [False, True])
def test_every_value_type_matches_gguf_reader(tmp_path, big_endian):
    """Each GGUF value type, scalar and array, in either byte order, reads as GGUFReader's contents()."""
    types = gguf.GGUFValueType
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    path = tmp_path / "types.gguf"
    writer = gguf.GGUFWriter(path, arch="llama", endianess=endian)
    scalars = {types.UINT8: 200, types.INT8: -100, types.UINT16: 60000, types.INT16: -30000,
               types.UINT32: 4_000_000_000, types.INT32: -2_000_000_000, types.FLOAT32: 0.1,
               types.BOOL: True, types.UINT64: 2**64 - 1, types.INT64: -(2**63), types.FLOAT64: 0.1}
    for vtype, value in scalars.items():
        writer.add_key_value(f"scalar.{vtype.name}", value, vtype)
        writer.add_key_value(f"array.{vtype.name}", [value, value if vtype == types.BOOL else 0, value],
                             types.ARRAY, sub_type=vtype)
    writer.add_key_value("scalar.STRING", "héllo \n wörld ✓", types.STRING)
    writer.add_key_value("scalar.empty", "", types.STRING)
    writer.add_key_value("array.STRING", ["", "a b", "Ġ", "\U0001f600"], types.ARRAY, sub_type=types.STRING)
    writer.add_bool("scalar.false", False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    got = read_gguf_metadata(path)
    expected = reference_metadata(path)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key] == value and type(got[key]) is type(value), key
    assert got["scalar.UINT64"] == 2**64 - 1 and got["array.INT8"] == [-100, 0, -100]
    assert got["scalar.FLOAT32"] != 0.1 and got["scalar.FLOAT64"] == 0.1  # float32 precision, as stored
    assert got["scalar.BOOL"] is True and got["scalar.false"] is False


@needs_gguf
def test_arrays_of_arrays_stay_nested(tmp_path):
    """The spec allows arrays of arrays; GGUFReader flattens them, gptlab keeps the nesting."""
    path = tmp_path / "nested.gguf"
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_key_value("nested", [[1, 2], [3]], gguf.GGUFValueType.ARRAY)
    writer.add_key_value("nested.strings", [["a"], ["b", "c"]], gguf.GGUFValueType.ARRAY)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    got = read_gguf_metadata(path)
    assert got["nested"] == [[1, 2], [3]] and got["nested.strings"] == [["a"], ["b", "c"]]


def test_big_endian_vocabulary_reads_like_little_endian(tmp_path):
    little = read_gguf_vocab(write_gguf(tmp_path / "le.gguf", add_bos=True))
    big = read_gguf_vocab(write_gguf(tmp_path / "be.gguf", add_bos=True, big_endian=True))
    assert big == little


def test_every_truncation_is_a_one_line_error(tmp_path):
    """A file cut anywhere inside its metadata is refused in one line naming the file; a file cut after
    it (in the alignment padding) still reads, since the metadata is all the vocabulary needs."""
    whole_path = write_gguf(tmp_path / "whole.gguf", add_bos=True)
    whole = whole_path.read_bytes()
    end = metadata_end(whole_path)
    assert 0 < end <= len(whole)
    full = read_gguf_metadata(whole_path)
    cut = tmp_path / "cut.gguf"
    for size in range(len(whole)):
        cut.write_bytes(whole[:size])
        if size >= end:
            assert read_gguf_metadata(cut) == full, size
            continue
        with pytest.raises(GptlabError) as err:
            read_gguf_vocab(cut)
        message = str(err.value)
        assert "\n" not in message and str(cut) in message and "not a readable GGUF file" in message, size
        assert "truncated" in message, (size, message)


def _string(text: bytes | str) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def _kv(key: bytes | str, vtype: int, payload: bytes) -> bytes:
    return _string(key) + struct.pack("<I", vtype) + payload


def _raw_gguf(*kvs: bytes, version: int = 3, kv_count: int | None = None) -> bytes:
    """A little-endian GGUF file written byte by byte (no gguf package): header, then the given pairs."""
    count = len(kvs) if kv_count is None else kv_count
    return b"GGUF" + struct.pack("<IQQ", version, 0, count) + b"".join(kvs)


def _nested(depth: int) -> bytes:
    """An array of arrays ``depth`` deep, ending in an empty uint8 array."""
    payload = struct.pack("<IQ", 0, 0)
    for _ in range(depth):
        payload = struct.pack("<IQ", 9, 1) + payload
    return payload


@pytest.mark.parametrize("data, expected", [
    (b"", "truncated"),
    (b"GG", "truncated"),
    (b"GGUF\x03\x00", "truncated"),
    (b"not a GGUF file at all, only text", "not a GGUF file"),
    (b"GGML" + bytes(20), "not a GGUF file"),
    (_raw_gguf(version=1), "version 1"),
    (_raw_gguf(version=4), "version 4"),
    (_raw_gguf(kv_count=1), "key #0"),
    (_raw_gguf(_kv("k", 13, b"")), "unknown value type 13"),
    (_raw_gguf(_kv("k", 9, struct.pack("<IQ", 13, 1) + b"\0")), "unknown array element type 13"),
    (_raw_gguf(_kv("k", 4, struct.pack("<I", 1)), _kv("k", 4, struct.pack("<I", 2))), "appears twice"),
    (_raw_gguf(_kv("k", 8, _string(b"\xff\xfe"))), "not UTF-8"),
    (_raw_gguf(_kv(b"\xffkey", 4, struct.pack("<I", 1))), "not UTF-8"),
    (_raw_gguf(_kv("k", 8, struct.pack("<Q", 2**63) + b"abc")), "truncated"),
    (_raw_gguf(_kv("k", 9, struct.pack("<IQ", 4, 2**62) + bytes(8))), "truncated"),
    (_raw_gguf(_kv("k", 9, struct.pack("<IQ", 8, 2**62) + _string("a"))), "truncated"),
    (_raw_gguf(_kv("k", 9, struct.pack("<IQ", 8, 2) + _string("a") + struct.pack("<Q", 5) + b"ab")), "truncated"),
    (_raw_gguf(_kv("k", 9, _nested(100))), "nested deeper"),
])
def test_malformed_file_is_a_one_line_error(tmp_path, data, expected):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GptlabError) as err:
        read_gguf_vocab(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "not a readable GGUF file" in message
    assert expected in message, message


def test_metadata_of_a_hand_written_file():
    """The reader on bytes written straight from the spec, no gguf package involved."""
    data = _raw_gguf(
        _kv("general.name", 8, _string("tiny")),
        _kv("count", 10, struct.pack("<Q", 7)),
        _kv("ids", 9, struct.pack("<IQ", 5, 3) + struct.pack("<3i", -1, 0, 1)),
        _kv("words", 9, struct.pack("<IQ", 8, 2) + _string("a b") + _string("")),
        _kv("nested", 9, _nested(2)),
    )
    metadata = gguf_vocab._parse_metadata(data, Path("hand.gguf"))
    assert metadata == {"general.name": "tiny", "count": 7, "ids": [-1, 0, 1], "words": ["a b", ""],
                        "nested": [[[]]]}


def test_reading_needs_no_gguf_package(tmp_path, monkeypatch):
    """read_gguf_vocab never imports gguf: with the import blocked it still reads a file."""
    path = write_gguf(tmp_path / "tiny.gguf", add_bos=True)
    expected = read_gguf_vocab(path)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    assert read_gguf_vocab(path) == expected
