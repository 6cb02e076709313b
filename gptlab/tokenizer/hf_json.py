"""Hugging Face ``tokenizer.json`` (+ ``tokenizer_config.json``) <-> gptlab's own BPE engine.

Reading: a byte-level BPE ``tokenizer.json`` becomes a :class:`BPETokenizer` with the file's
vocabulary and merge list, normalizer, pre-tokenizer (:mod:`gptlab.tokenizer.pipeline`), added tokens
with their flags (:mod:`gptlab.tokenizer.added`) and post-processor (the ids ``add_special_tokens``
puts around a text); ``tokenizer_config.json`` brings the chat template and the BOS/EOS/PAD names.
Other model types (SentencePiece-style BPE with ``byte_fallback``, Unigram, WordPiece) are refused in
one line: gptlab's engine is byte-level BPE.

Writing is :mod:`gptlab.tokenizer.hf_writer`'s (``BPETokenizer.save`` uses it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizer.added import AddedToken
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.byte_alphabet import bytes_to_unicode
from gptlab.tokenizer.hf_writer import CONFIG_NAME
from gptlab.tokenizer.pipeline import normalizer_from_json, pipeline_from_json

TEMPLATE_NAME = "chat_template.jinja"  # transformers >= 4.43 may save the template beside the config


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
    if not vocab:
        raise GptlabError(f"{where}: the BPE model has an empty vocabulary")
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


