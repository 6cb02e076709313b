"""Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``) <-> gptlab's own BPE engine.

Reading: a byte-level BPE ``tokenizer.json`` becomes a :class:`BPETokenizer` with the file's
vocabulary and merge list, normalizer, pre-tokenizer (:mod:`gptlab.tokenizer.pipeline`), added tokens
with their flags (:mod:`gptlab.tokenizer.added`) and post-processor (the ids ``add_special_tokens``
puts around a text); ``tokenizer_config.json`` brings the chat template and the BOS/EOS/PAD names.
Other model types (SentencePiece-style BPE with ``byte_fallback``, Unigram, WordPiece) are refused in
one line: gptlab's engine is byte-level BPE.

Writing: any :class:`BPETokenizer` becomes a ``tokenizer.json`` that ``tokenizers`` and transformers'
``PreTrainedTokenizerFast`` load and encode with identical ids. A tokenizer trained here gets its
merge list recovered from its ranks (each token's two parts are what BPE with the lower ranks makes
of it), GPT-2's pre-tokenizer spelled as ``ByteLevel``, any other pattern as a ``Split``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text
from gptlab.tokenizer.added import AddedToken
from gptlab.tokenizer.bpe import BPETokenizer, bytes_to_unicode
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.merge import _NOT_A_TOKEN
from gptlab.tokenizer.pipeline import normalizer_from_json, pipeline_from_json

CONFIG_NAME = "tokenizer_config.json"
TEMPLATE_NAME = "chat_template.jinja"  # transformers >= 4.43 may save the template beside the config
_BYTE_LEVEL_POST = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
_BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def is_tokenizer_json(payload: Any) -> bool:
    """Whether a parsed JSON file is a Hugging Face ``tokenizer.json`` (it has a ``model`` object)."""
    return isinstance(payload, dict) and isinstance(payload.get("model"), dict)


# ----------------------------------------------------------------------------------------- reading
def from_tokenizer_json(payload: dict[str, Any], where: str, config: dict[str, Any] | None = None,
                        name: str = "hf") -> BPETokenizer:
    """A :class:`BPETokenizer` from a parsed ``tokenizer.json`` (``where`` names it in errors).

    ``config`` is the parsed ``tokenizer_config.json`` (chat template, BOS/EOS/PAD), if any.
    """
    model = payload.get("model") or {}
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise GptlabError(
            f"{where}: a {kind} tokenizer; gptlab reads byte-level BPE tokenizers only (GPT-2, Llama 3, Qwen, "
            "SmolLM, DeepSeek, StarCoder), not SentencePiece/Unigram (Gemma, T5) or WordPiece (BERT)"
        )
    if model.get("byte_fallback"):
        raise GptlabError(
            f"{where}: a SentencePiece-style BPE (byte_fallback: true, as in Llama 2, Mistral 7B v0.1 and Phi-3); "
            "gptlab reads byte-level BPE tokenizers only"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise GptlabError(f"{where}: BPE with subword prefixes/suffixes is not byte-level BPE; not supported")
    added = [AddedToken.from_json(t) for t in payload.get("added_tokens") or []]
    added_text = {t.id: t.content.encode("utf-8") for t in added}
    special_text = {t.id: t.content.encode("utf-8") for t in added if t.special}
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[bytes, int] = {}
    for text, idx in (model.get("vocab") or {}).items():
        if idx in special_text and all(c in byte_decoder for c in text) \
                and bytes(byte_decoder[c] for c in text) == special_text[idx]:
            continue  # a special token's own text listed in the vocabulary too (GPT-2's <|endoftext|>)
        # Otherwise an id may be both: `tokenizers` gives an added token whose text is a vocabulary
        # key that key's id (DeepSeek adds "ø", which is also how the byte 0xF8 is spelled). BPE can
        # make the id from bytes; text matching makes it from the added text; it decodes as the latter.
        try:
            vocab[bytes(byte_decoder[c] for c in text)] = int(idx)
        except KeyError:
            if idx in added_text:
                continue
            raise GptlabError(
                f"{where}: token {text!r} is not written in the byte-level alphabet, so this is not a byte-level "
                "BPE vocabulary (SentencePiece-style vocabularies, e.g. Gemma's or Phi-3's, are not supported)"
            ) from None
    merges = []
    for i, m in enumerate(model.get("merges") or []):
        left, right = m.split(" ", 1) if isinstance(m, str) else m
        try:
            merges.append((bytes(byte_decoder[c] for c in left), bytes(byte_decoder[c] for c in right)))
        except KeyError:
            raise GptlabError(f"{where}: merge {i} ({left!r} {right!r}) is not in the byte-level alphabet") from None
    pre = payload.get("pre_tokenizer")
    tok = BPETokenizer(
        vocab,
        name=name,
        merges=merges,
        ignore_merges=bool(model.get("ignore_merges", False)),
        pretokenizer=pipeline_from_json(pre, where),
        normalizer=normalizer_from_json(payload.get("normalizer"), where),
        added_tokens=added,
        pipeline={k: payload.get(k) for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")},
    )
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        tok.pattern = GPT2_PATTERN
    else:
        tok.pattern = None  # the pipeline, not one regex, defines the pre-tokens
    tok.prefix_ids, tok.suffix_ids = _post_processor_ids(payload.get("post_processor"), where)
    apply_config(tok, config or {})
    return tok


def _post_processor_ids(obj: dict[str, Any] | None, where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What ``add_special_tokens=True`` puts before and after a single text."""
    if obj is None:
        return (), ()
    kind = obj.get("type")
    if kind == "ByteLevel":
        return (), ()
    if kind == "Sequence":
        prefix: tuple[int, ...] = ()
        suffix: tuple[int, ...] = ()
        for sub in obj.get("processors", []):
            p, s = _post_processor_ids(sub, where)
            prefix, suffix = prefix + p, suffix + s
        return prefix, suffix
    if kind == "TemplateProcessing":
        specials = obj.get("special_tokens") or {}
        before: list[int] = []
        after: list[int] = []
        seen_text = False
        for item in obj.get("single") or []:
            if "Sequence" in item:
                seen_text = True
                continue
            name = item["SpecialToken"]["id"]
            ids = specials.get(name, {}).get("ids")
            if ids is None:
                raise GptlabError(f"{where}: post_processor template names {name!r}, which it does not define")
            (after if seen_text else before).extend(int(i) for i in ids)
        return tuple(before), tuple(after)
    if kind in ("RobertaProcessing", "BertProcessing"):
        return (int(obj["cls"][1]),), (int(obj["sep"][1]),)
    raise GptlabError(f"{where}: post_processor {kind!r} is not supported")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken object."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def apply_config(tok: BPETokenizer, config: dict[str, Any]) -> None:
    """Take the chat template and BOS/EOS/PAD names from a parsed ``tokenizer_config.json``."""
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one is the chat template
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        tok.chat_template = template
    for field in ("bos_token", "eos_token", "pad_token"):
        text = _token_text(config.get(field))
        if text is not None:
            setattr(tok, field, text)


def read_tokenizer_config(directory: str | os.PathLike) -> dict[str, Any]:
    """A folder's ``tokenizer_config.json`` (empty when absent), with ``chat_template.jinja`` if present."""
    directory = Path(directory)
    config: dict[str, Any] = {}
    path = directory / CONFIG_NAME
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise GptlabError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise GptlabError(f"{path}: expected a JSON object")
    template = directory / TEMPLATE_NAME
    if template.is_file():
        config["chat_template"] = template.read_text(encoding="utf-8")
    return config


# ----------------------------------------------------------------------------------------- writing
def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a rank-ordered vocabulary: for each token, in rank order, the two tokens BPE
    with only lower ranks makes of its bytes. Raises if a token is not reachable that way (then the
    ranks are not a BPE training record and no single merge list reproduces them)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = _NOT_A_TOKEN, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1], _NOT_A_TOKEN)
                if r < best and r < rank:
                    best, at = r, i
            if at < 0:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        if len(parts) != 2:
            raise GptlabError(f"token {token!r} (id {rank}) is not made by merging two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _pre_tokenizer_json(tok: BPETokenizer) -> dict[str, Any]:
    if tok.pipeline is not None and "pre_tokenizer" in tok.pipeline:
        return tok.pipeline["pre_tokenizer"]
    if tok.pattern == GPT2_PATTERN:
        return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}


def to_tokenizer_json(tok: BPETokenizer) -> dict[str, Any]:
    """``tok`` as a ``tokenizer.json`` object (see the module docstring)."""
    alphabet = bytes_to_unicode()
    spell = lambda b: "".join(alphabet[x] for x in b)  # noqa: E731 - a one-line helper
    merges = tok.merges if tok.merges is not None else recover_merges(tok.mergeable_ranks)
    pipeline = tok.pipeline or {}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [t.to_json() for t in tok.added_tokens],
        "normalizer": pipeline.get("normalizer"),
        "pre_tokenizer": _pre_tokenizer_json(tok),
        "post_processor": pipeline.get("post_processor", _BYTE_LEVEL_POST),
        "decoder": pipeline.get("decoder") or _BYTE_LEVEL_DECODER,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": tok.ignore_merges,
            "vocab": {spell(t): i for t, i in sorted(tok.mergeable_ranks.items(), key=lambda kv: kv[1])},
            "merges": [[spell(a), spell(b)] for a, b in merges],
        },
    }


def tokenizer_config(tok: BPETokenizer, model_max_length: int | None = None) -> dict[str, Any]:
    """The ``tokenizer_config.json`` transformers reads beside our ``tokenizer.json``."""
    eos = tok.eos_token or (tok.eot_id is not None and "<|endoftext|>") or None
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "bos_token": tok.bos_token,
        "eos_token": eos,
        "pad_token": tok.pad_token,
        "added_tokens_decoder": {str(t.id): {k: v for k, v in t.to_json().items() if k != "id"} for t in tok.added_tokens},
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if tok.chat_template:
        config["chat_template"] = tok.chat_template
    return config


def save_pretrained_tokenizer(tok: BPETokenizer, directory: str | os.PathLike, model_max_length: int | None = None) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (atomically each)."""
    directory = Path(directory)
    atomic_write_text(directory / "tokenizer.json", json.dumps(to_tokenizer_json(tok), ensure_ascii=False))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(tokenizer_config(tok, model_max_length), ensure_ascii=False, indent=2))
