"""A GGUF file's vocabulary as a Hugging Face ``tokenizer.json`` dict, so that GGUF and tokenizer.json share one loader.

A GGUF file (llama.cpp's format) carries the tokenizer as flat metadata: the token strings, their
types, the merges, the special-token ids, and one name, ``tokenizer.ggml.pre``, for the whole
pre-tokenization recipe. The recipe itself lives only in llama.cpp's source. This module rebuilds the
``tokenizer.json`` the model was converted from: the token tables come from the file, and the parts the
file only names (normalizer, pre-tokenizer, ``ignore_merges``) come from :data:`PRE_TOKENIZERS`, a table
keyed by that name whose entries were checked against each model's real Hugging Face tokenizer through
the test vectors llama.cpp ships (``ggml-vocab-NAME.gguf.inp``/``.out``): built into a ``tokenizers``
tokenizer, every entry reproduces the real tokenizer's ids exactly.

Only byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``) are converted: a SentencePiece
vocabulary ("llama": Llama 2, Gemma, Phi-3) has no merges and another model type altogether.
"""

from __future__ import annotations

import copy
import dataclasses
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptlab.errors import GptlabError
from gptlab.tokenizer.bpe_pattern import LLAMA3_PATTERN, QWEN2_PATTERN, QWEN35_PATTERN

# GGUF token types (gguf.TokenType); spelled out so that the table below reads without the package.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's converter fills ids that the Hugging Face tokenizer lacks (config vocab_size larger than
# the tokenizer: Qwen2, DeepSeek) with "[PAD<id>]", typed UNUSED (older files: USER_DEFINED).
_FILLER = re.compile(r"\[PAD(\d+)\]")


def _byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets,
            "use_regex": use_regex}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# DeepSeek-LLM's letter class. Characters that Unicode normalization would rewrite (Greek Extended
# range ends, the Ohm and Kelvin signs, astral ranges) are escaped so that no editor can silently
# NFC-normalize them into a different (even descending, hence invalid) range.
DEEPSEEK_LLM_LETTERS = "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"  # noqa: E501
DEEPSEEK_PUNCTUATION = "\\s?[!-/:-~！-／：-～‘-‟　-。]+"
DEEPSEEK_CJK = "[一-龥ࠀ-一가-퟿]+"

# The BPE model's fields that vary between real tokenizer.json files (the rest are the same everywhere).
_HF_DEFAULTS = {"continuing_subword_prefix": None, "end_of_word_suffix": None, "ignore_merges": False}
_GPT2_STYLE = {"continuing_subword_prefix": "", "end_of_word_suffix": ""}  # how GPT-2/Qwen files spell "none"

# tokenizer.ggml.pre -> the parts of the real model's tokenizer.json that the GGUF file only names.
# Each entry: normalizer, pre_tokenizer, model (BPE fields), post (the ByteLevel post-processor), decoder,
# add_bos (llama.cpp's default when the file has no tokenizer.ggml.add_bos_token), and `source`, where
# the entry comes from. Every entry with a vocabulary under shared/data/llama-vocab reproduces all of its
# vectors; the comments say which choices the vectors decide (changing them breaks some vectors) and
# which rest on the published file alone (the vectors cannot tell the alternatives apart).
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": {
        # GPT-2: the regex lives inside ByteLevel (use_regex), no normalizer. Vectors decide
        # add_prefix_space=false (true breaks 30 of 46).
        "source": "openai-community/gpt2 tokenizer.json; vectors ggml-vocab-gpt-2 pass",
        "normalizer": None,
        "pre_tokenizer": _byte_level(False, True, True),
        "model": _GPT2_STYLE,
        "post": _byte_level(True, False, True),
        "decoder": _byte_level(True, True, True),
        "add_bos": False,
    },
    "llama-bpe": {
        # Llama 3: the regex is an explicit Split and ByteLevel only maps bytes. Vectors decide the regex
        # (Qwen2's single digits break 11 of 46), use_regex=false (true breaks 3) and ignore_merges=true:
        # a pre-token that is itself in the vocabulary is taken whole, which the merges alone do not
        # always reach (false breaks 1). llama.cpp also sets ignore_merges and add_bos for this name.
        "source": "meta-llama/Meta-Llama-3-8B tokenizer.json; vectors ggml-vocab-llama-bpe pass",
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            _split(LLAMA3_PATTERN), _byte_level(False, True, False)]},
        "model": {"ignore_merges": True},
        "post": _byte_level(True, False, True),
        "decoder": _byte_level(True, True, True),
        "add_bos": True,
    },
    "qwen2": {
        # Qwen1.5/2/2.5/3 share one tokenizer: NFC first, then the Qwen2 regex, then bytes. Vectors decide
        # use_regex=false (true breaks 3). NFC, ignore_merges=false and \p{N} (vs Llama 3's \p{N}{1,3}:
        # the vocabulary has no multi-digit token) give the same ids on these vectors either way; they
        # are what Qwen's published tokenizer.json holds.
        "source": "Qwen/Qwen1.5-7B (= Qwen2/2.5/3) tokenizer.json; vectors ggml-vocab-qwen2 pass",
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            _split(QWEN2_PATTERN), _byte_level(False, False, False)]},
        "model": _GPT2_STYLE,
        "post": _byte_level(False, False, False),
        "decoder": _byte_level(False, False, False),
        "add_bos": False,
    },
    "qwen35": {
        # Qwen3.5: same vocabulary as Qwen2, new regex (\p{M} kept in words; quoted from its tokenizer.json
        # in llama.cpp) and no normalizer at all, which the vectors decide: they include decomposed text
        # ("e" + U+0301) whose ids stay decomposed, where NFC would compose it into "é" (breaks 3 of 50).
        "source": "Qwen/Qwen3.5 tokenizer.json regex (quoted in llama.cpp); vectors ggml-vocab-qwen35 pass",
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            _split(QWEN35_PATTERN), _byte_level(False, False, False)]},
        "model": _GPT2_STYLE,
        "post": _byte_level(False, False, False),
        "decoder": _byte_level(False, False, False),
        "add_bos": False,
    },
    "starcoder": {
        # StarCoder2: every digit alone, then GPT-2's regex inside ByteLevel (without Digits, 1 of 46
        # vectors breaks).
        "source": "bigcode/starcoder2-3b tokenizer.json; vectors ggml-vocab-starcoder pass",
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level(False, True, True)]},
        "model": {},
        "post": _byte_level(False, True, True),
        "decoder": _byte_level(False, True, True),
        "add_bos": False,
    },
    "deepseek-llm": {
        # DeepSeek-LLM: a cascade of Splits (newlines, letter runs, punctuation runs, trailing spaces, CJK,
        # numbers), then bytes without a regex (llama.cpp runs no further regex after the cascade, and
        # DeepSeek-Coder's file, printed in llama.cpp PR #7033, ends the same way). The regexes are
        # llama.cpp's, which copies them unchanged from the file. The vectors need the number split
        # (without it 1 of 46 breaks) but cannot tell the other Splits apart; the number step is
        # \p{N}+ as llama.cpp writes it (Digits(individual_digits=false) is the same split, and the
        # vocabulary has no multi-digit token anyway).
        "source": "deepseek-ai/deepseek-llm-7b-base regexes (llama.cpp llama-vocab.cpp); vectors "
                  "ggml-vocab-deepseek-llm pass",
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            _split("[\r\n]"), _split(DEEPSEEK_LLM_LETTERS), _split(DEEPSEEK_PUNCTUATION), _split("\\s+$"),
            _split(DEEPSEEK_CJK), _split("\\p{N}+"), _byte_level(False, True, False)]},
        "model": {},
        "post": _byte_level(True, False, True),
        "decoder": _byte_level(True, True, True),
        "add_bos": False,  # the GGUF file carries add_bos_token=true, as the model's tokenizer_config does
    },
    "deepseek-coder": {
        # DeepSeek-Coder (v1): like DeepSeek-LLM with \p{L}/\p{P} runs and single digits. The structure is
        # the tokenizer.json printed by llama.cpp's convert_hf_to_gguf_update.py (PR #7033), whose
        # regexes llama-vocab.cpp repeats. No test vectors here.
        "source": "deepseek-ai/deepseek-coder-6.7b-base tokenizer.json as dumped in llama.cpp PR #7033",
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            _split("[\r\n]"), _split("\\s?\\p{L}+"), _split("\\s?\\p{P}+"), _split(DEEPSEEK_CJK),
            {"type": "Digits", "individual_digits": True}, _byte_level(False, True, False)]},
        "model": {},
        "post": _byte_level(True, False, True),
        "decoder": _byte_level(True, True, True),
        "add_bos": False,
    },
}
# Names llama.cpp gives the very same tokenizer (or an exact fine-tune of it).
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-v3"] = PRE_TOKENIZERS["llama-bpe"]
# SmolLM's tokenizer follows StarCoder's recipe: single digits, then GPT-2's regex inside ByteLevel
# (llama.cpp runs the very same regexes for both names). No test vectors here.
PRE_TOKENIZERS["smollm"] = dict(PRE_TOKENIZERS["starcoder"],
                                source="HuggingFaceTB/SmolLM-135M tokenizer.json (StarCoder recipe)")
# Left out on purpose: names whose tokenizer.json is not known exactly. "smaug-bpe" and "dbrx" share
# Llama 3's regex in llama.cpp but not its hash (so not its behaviour: e.g. ignore_merges), "falcon3",
# "deepseek-r1-qwen" and others were never checked here.


# The GGUF metadata reader. gguf.GGUFReader builds a numpy view per string, which takes 10-27 s on a
# 128k-token, 280k-merge vocabulary; reading the key/value section straight off an mmap takes a fraction
# of a second, and needs no `gguf` package for a vocabulary. Layout (GGUF spec, versions 2 and 3;
# version 1 used 32-bit lengths and is refused, as GGUFReader refuses it): the magic b"GGUF", then in the
# file's byte order uint32 version, uint64 tensor_count, uint64 kv_count, then kv_count pairs of a string
# key, a uint32 value type and the value. The tensor infos that follow are read by read_gguf_tensors
# (loading a model), never for the vocabulary alone.
_MAGIC = b"GGUF"  # written as these 4 bytes whatever the file's byte order (GGUFWriter packs it "<I")
_VERSIONS = (2, 3)
_STRING, _ARRAY = 8, 9
# gguf.GGUFValueType -> struct/numpy format of the fixed-size types (byte order prefixed at read time).
_SCALARS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                            12: "d"}
# The spec allows arrays of arrays (no real file uses them); a bound keeps a crafted file from recursing
# until Python's stack runs out.
_MAX_ARRAY_DEPTH = 8


class _Truncated(Exception):
    """The file ends inside a value (internal: turned into a GptlabError that names the file)."""


class _MetadataParser:
    """Reads GGUF values from ``buf`` (an mmap or bytes) in one byte order, keeping the read offset."""

    def __init__(self, buf: Any, order: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.order = order  # "<" or ">", the struct/numpy byte-order prefix
        self.pos = 0
        self._u32 = struct.Struct(order + "I").unpack_from
        self._u64 = struct.Struct(order + "Q").unpack_from

    def _need(self, nbytes: int) -> None:
        # Checked before each read: slicing past the end silently returns fewer bytes, and a corrupt count
        # could otherwise ask numpy or the string loop for terabytes.
        if nbytes > self.size - self.pos:
            raise _Truncated(f"needs {nbytes} bytes at offset {self.pos}, the file has {self.size - self.pos} left")

    def u32(self) -> int:
        self._need(4)
        (value,) = self._u32(self.buf, self.pos)
        self.pos += 4
        return value

    def u64(self) -> int:
        self._need(8)
        (value,) = self._u64(self.buf, self.pos)
        self.pos += 8
        return value

    def string(self) -> str:
        length = self.u64()
        self._need(length)
        start, self.pos = self.pos, self.pos + length
        return self.buf[start:self.pos].decode("utf-8")  # strict, like GGUFReader's contents()

    def value(self, vtype: int, depth: int = 0) -> Any:
        """One value of GGUF type ``vtype`` as plain Python, as ``ReaderField.contents()`` gives it."""
        fmt = _SCALARS.get(vtype)
        if fmt is not None:
            size = struct.calcsize(fmt)
            self._need(size)
            (scalar,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
            self.pos += size
            return scalar
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(depth)
        raise ValueError(f"unknown value type {vtype}")

    def array(self, depth: int) -> list:
        elem_type = self.u32()
        count = self.u64()
        fmt = _SCALARS.get(elem_type)
        if fmt is not None:
            # Numbers in one numpy call: a copy of the bytes (so that no view pins the mmap open), then
            # tolist() for the same Python ints/floats/bools that GGUFReader's contents() returns.
            dtype = np.dtype(self.order + fmt)
            self._need(count * dtype.itemsize)
            start, self.pos = self.pos, self.pos + count * dtype.itemsize
            return np.frombuffer(self.buf[start:self.pos], dtype=dtype).tolist()
        if elem_type == _STRING:
            # Tokens and merges: a plain loop over offsets, the hot path (280k strings in well under 1 s).
            # Every string takes at least its 8-byte length, which bounds a corrupt count up front.
            self._need(count * 8)
            buf, size, u64, pos = self.buf, self.size, self._u64, self.pos
            strings: list[str] = []
            append = strings.append
            try:
                for _ in range(count):
                    (length,) = u64(buf, pos)  # struct.error past the end (try costs nothing in 3.11)
                    start, pos = pos + 8, pos + 8 + length
                    if pos > size:  # a slice would quietly come back short
                        raise _Truncated(f"a string of {length} bytes at offset {start} runs past the end")
                    append(buf[start:pos].decode("utf-8"))
            except struct.error:
                raise _Truncated(f"a string length at offset {pos} runs past the end") from None
            self.pos = pos
            return strings
        if elem_type == _ARRAY:
            # Kept nested (GGUFReader flattens these); only reachable in files no converter writes.
            if depth >= _MAX_ARRAY_DEPTH:
                raise ValueError(f"arrays nested deeper than {_MAX_ARRAY_DEPTH} levels")
            self._need(count * 12)  # each inner array has at least its type and count
            return [self.array(depth + 1) for _ in range(count)]
        raise ValueError(f"unknown array element type {elem_type}")


def _parse_metadata(buf: Any, path: Path) -> dict[str, Any]:
    """The key/value section of the GGUF file whose bytes are ``buf``; errors name ``path``, in one line."""
    return _parse_head(buf, path)[0]


def _parse_head(buf: Any, path: Path) -> tuple[dict[str, Any], _MetadataParser, int]:
    """``(metadata, parser, tensor_count)``: the parser stands just after the key/value section."""
    def fail(why: str) -> GptlabError:
        return GptlabError(f"{path}: not a readable GGUF file ({why})")

    head = bytes(buf[:4])
    if head != _MAGIC:
        if len(head) < 4 and _MAGIC.startswith(head):
            raise fail(f"truncated: {len(head)} bytes, shorter than the 4-byte magic")
        raise fail(f"it starts with {head!r}, not the magic b'GGUF': not a GGUF file")
    if len(buf) < 24:  # magic, version, tensor count, kv count
        raise fail(f"truncated: {len(buf)} bytes, shorter than the 24-byte header")
    # The version tells the byte order: a big-endian file's 3 reads as 0x03000000 little-endian (GGUFReader
    # tests the low 16 bits for zero the same way).
    (version,) = struct.unpack_from("<I", buf, 4)
    order = "<"
    if version not in _VERSIONS:
        (swapped,) = struct.unpack_from(">I", buf, 4)
        if swapped not in _VERSIONS:
            raise fail(f"version {version} (or {swapped} big-endian); only versions 2 and 3 are supported")
        order = ">"
    parser = _MetadataParser(buf, order)
    parser.pos = 8
    tensor_count = parser.u64()  # the tensor infos come after the metadata (read_gguf_tensors reads them)
    kv_count = parser.u64()

    metadata: dict[str, Any] = {}
    for index in range(kv_count):
        key_at = parser.pos
        key: str | None = None
        try:
            key = parser.string()
            vtype = parser.u32()
            value = parser.value(vtype)
        except (_Truncated, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            where = f"key {key!r}" if key is not None else f"key #{index} at offset {key_at}"
            why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            if isinstance(exc, _Truncated):
                why = f"truncated: {why}"
            raise fail(f"{where} of {kv_count}: {why}") from None
        if key in metadata:  # GGUFReader refuses these too; silently keeping one would hide a broken file
            raise fail(f"key {key!r} appears twice")
        metadata[key] = value
    return metadata, parser, tensor_count


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The GGUF file's metadata (key/value section) as ``{key: value}`` with plain Python values.

    Values are what ``gguf.GGUFReader(path).fields[key].contents()`` gives: ``str``, ``int``, ``float``,
    ``bool``, or a ``list`` of those (arrays of arrays stay nested). Only the metadata is read, through an
    mmap, so a multi-gigabyte model file costs no more than its vocabulary. Little- and big-endian files
    are both read. Raises :class:`GptlabError` (one line, naming the file) for a missing, truncated or
    malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: no such GGUF file")
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:  # mmap refuses empty files
                return _parse_metadata(b"", path)
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse_metadata(buf, path)
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read the GGUF file ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of a GGUF file's tensor table: where a tensor's bytes are and how to read them."""

    name: str
    shape: tuple[int, ...]  # torch order (outermost first): GGUF lists dimensions innermost first
    type: int  # a gguf.GGMLQuantizationType value (0 F32, 1 F16, 8 Q8_0, 30 BF16, ...)
    offset: int  # absolute: from the start of the file, not of the data section


def read_gguf_tensors(path: str | os.PathLike) -> tuple[dict[str, Any], list[GGUFTensorInfo]]:
    """The GGUF file's metadata and its tensor table (names, shapes, types, absolute byte offsets).

    Nothing of the tensor data is read; offsets are checked to lie inside the file only by the caller,
    which knows each type's size. Only little-endian files are accepted (their tensor data is what
    numpy reads on every machine gptlab runs on); errors are one-line :class:`GptlabError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GptlabError(f"{path}: no such GGUF file")
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                _parse_metadata(b"", path)  # raises: too short
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                metadata, parser, count = _parse_head(buf, path)
                if parser.order != "<":
                    raise GptlabError(f"{path}: a big-endian GGUF file; only little-endian model files are supported")
                tensors = []
                try:
                    for _ in range(count):
                        name = parser.string()
                        n_dims = parser.u32()
                        if n_dims > 8:  # GGML_MAX_DIMS is 4; a larger count is a damaged file
                            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
                        dims = [parser.u64() for _ in range(n_dims)]
                        tensors.append(GGUFTensorInfo(name, tuple(reversed(dims)), parser.u32(), parser.u64()))
                except (_Truncated, ValueError) as exc:
                    raise GptlabError(f"{path}: not a readable GGUF file (tensor table: {exc})") from None
                alignment = int(metadata.get("general.alignment", 32) or 32)
                start = -(-parser.pos // alignment) * alignment  # the data section starts aligned
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read the GGUF file ({exc.strerror or exc})") from None
    return metadata, [dataclasses.replace(t, offset=start + t.offset) for t in tensors]


def _added_token(token_id: int, content: str, special: bool) -> dict:
    # GGUF stores control and user-defined tokens already normalized (llama.cpp's converter does that on
    # purpose), so user-defined ones are matched in normalized text; control tokens match raw text.
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def _template(bos: str | None, bos_id: int | None, eos: str | None, eos_id: int | None) -> dict:
    """A TemplateProcessing that wraps each sequence in BOS/EOS, as Hugging Face's Llama tokenizers build it."""
    def piece(token: str, type_id: int) -> dict:
        return {"SpecialToken": {"id": token, "type_id": type_id}}

    single: list[dict] = []
    pair: list[dict] = []
    for type_id, seq, out in ((0, "A", single), (0, "A", pair), (1, "B", pair)):
        if bos is not None:
            out.append(piece(bos, type_id))
        out.append({"Sequence": {"id": seq, "type_id": type_id}})
        if eos is not None:
            out.append(piece(eos, type_id))
    specials = {tok: {"id": tok, "ids": [tid], "tokens": [tok]}
                for tok, tid in ((bos, bos_id), (eos, eos_id)) if tok is not None}
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}


def read_gguf_vocab(path: str | os.PathLike) -> tuple[dict, dict]:
    """The GGUF file's tokenizer as ``(tokenizer_json, tokenizer_config)`` dicts in Hugging Face's schema.

    ``tokenizer_json`` is what ``tokenizer.json`` holds (``tokenizers.Tokenizer.from_str(json.dumps(...))``
    builds the model's own tokenizer from it); ``tokenizer_config`` holds ``bos_token``, ``eos_token``,
    ``pad_token`` (strings or None), ``add_bos_token``, ``add_eos_token`` and ``chat_template`` (None when
    the file has none). Raises :class:`GptlabError` for a file that is not a byte-level BPE vocabulary
    or whose pre-tokenizer (``tokenizer.ggml.pre``) is not in :data:`PRE_TOKENIZERS`.
    """
    path = Path(path)
    metadata = read_gguf_metadata(path)
    model_type = metadata.get("tokenizer.ggml.model")
    if model_type != "gpt2":
        kind = {"llama": "SentencePiece, as in Llama 2/Gemma/Phi-3", "bert": "WordPiece", "t5": "Unigram"}
        what = f"{model_type!r} ({kind[model_type]})" if model_type in kind else repr(model_type)
        raise GptlabError(f"{path}: tokenizer.ggml.model is {what}; only byte-level BPE (\"gpt2\") "
                          f"vocabularies are supported")
    pre = metadata.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise GptlabError(f"{path}: unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))}")
    recipe = PRE_TOKENIZERS[pre]

    tokens: list[str] = metadata.get("tokenizer.ggml.tokens") or []
    types: list[int] = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges: list[str] = metadata.get("tokenizer.ggml.merges") or []
    if not tokens or len(types) != len(tokens):
        raise GptlabError(f"{path}: tokenizer.ggml.tokens is missing, or token_type does not match it "
                          f"({len(tokens)} tokens, {len(types)} types)")

    # Every token goes into the model's vocabulary at its own id, added tokens included (as GPT-2's and
    # StarCoder2's tokenizer.json files have them). `tokenizers` ignores the ids written in added_tokens:
    # it looks each one up in the model's vocabulary and, failing that, numbers it after the vocabulary's
    # *count*. Only with the vocabulary dense over all ids does every added token keep its GGUF id, e.g.
    # StarCoder's 38 control tokens at ids 0-37, or Qwen's specials ahead of the "[PAD<id>]" fillers.
    # No encoding reaches an added token through the model: they are cut out of the text before
    # pre-tokenization, and no merge builds them.
    vocab: dict[str, int] = {}
    added: list[dict] = []
    for token_id, (text, kind) in enumerate(zip(tokens, types)):
        # A string listed twice keeps its first id (a JSON object holds each key once); encoding can
        # then never produce the later id.
        vocab.setdefault(text, token_id)
        filler = _FILLER.fullmatch(text)
        if kind in (CONTROL, UNKNOWN):
            added.append(_added_token(token_id, text, special=True))
        elif kind == USER_DEFINED and not (filler and int(filler.group(1)) == token_id):
            # A real user-defined token, e.g. DeepSeek's 13 byte-level characters for the bytes UTF-8
            # never uses ("À", "ø", ...): not special, matched in text like any added token.
            added.append(_added_token(token_id, text, special=False))
        # NORMAL and BYTE tokens are byte-level strings, the model's own. Fillers ("[PAD<id>]", UNUSED or
        # USER_DEFINED) only hold their id: the real tokenizer lacks those ids, and nothing encodes to them.

    pairs: list[list[str]] = []
    for merge in merges:
        parts = merge.split(" ")
        # Byte-level tokens never hold a space (it is "Ġ"), so exactly one separates the two halves; and
        # tokenizers refuses a merge whose halves or result are not in the vocabulary, so say it here.
        # (Spelled out rather than all(...) over a generator: this runs once per merge, 280k times.)
        if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab or "".join(parts) not in vocab:
            raise GptlabError(f"{path}: bad merge {merge!r} in tokenizer.ggml.merges (expected 'left right', "
                              f"both and their concatenation in the vocabulary)")
        pairs.append(parts)

    def token_at(key: str) -> tuple[str | None, int | None]:
        token_id = metadata.get(key)
        if token_id is None or not 0 <= int(token_id) < len(tokens):
            return None, None
        return tokens[int(token_id)], int(token_id)

    bos, bos_id = token_at("tokenizer.ggml.bos_token_id")
    eos, eos_id = token_at("tokenizer.ggml.eos_token_id")
    pad, _ = token_at("tokenizer.ggml.padding_token_id")
    # llama.cpp's rule: the file's flag when present, else the pre-tokenizer's default.
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", recipe["add_bos"]))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))

    post: dict = copy.deepcopy(recipe["post"])
    if (add_bos and bos is not None) or (add_eos and eos is not None):
        template = _template(bos if add_bos else None, bos_id, eos if add_eos else None, eos_id)
        # Llama 3 keeps its ByteLevel post-processor (offsets only) in front of the template.
        post = {"type": "Sequence", "processors": [post, template]} if recipe is PRE_TOKENIZERS["llama-bpe"] \
            else template

    model = {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False, "byte_fallback": False}
    model |= _HF_DEFAULTS | recipe["model"]
    model |= {"vocab": vocab, "merges": pairs}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": copy.deepcopy(recipe["normalizer"]),
        "pre_tokenizer": copy.deepcopy(recipe["pre_tokenizer"]),
        "post_processor": post,
        "decoder": copy.deepcopy(recipe["decoder"]),
        "model": model,
    }
    tokenizer_config = {
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "chat_template": metadata.get("tokenizer.chat_template"),
    }
    return tokenizer_json, tokenizer_config
