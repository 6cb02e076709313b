"""A gptlab BPE tokenizer as GGUF vocabulary metadata (the other way round from :mod:`gguf_vocab`).

llama.cpp keeps a byte-level BPE vocabulary as flat arrays (``tokenizer.ggml.tokens``, ``token_type``,
``merges``), the special-token ids, and one name for the pre-tokenization recipe
(``tokenizer.ggml.pre``), whose regexes live in llama.cpp's source. The token strings and merges are
those of Hugging Face's ``tokenizer.json`` (:func:`~gptlab.tokenizer.hf_writer.to_tokenizer_json`); the
recipe name is the :data:`~gptlab.tokenizer.gguf_vocab.PRE_TOKENIZERS` entry whose normalizer and
pre-tokenizer are this tokenizer's, so that the file reads back into the same tokenizer, here and in
llama.cpp. Character and word tokenizers have no GGUF form and are refused.
"""

from __future__ import annotations

from typing import Any

from gptlab.errors import GptlabError
from gptlab.tokenizer.base import Tokenizer
from gptlab.tokenizer.bpe import BPETokenizer
from gptlab.tokenizer.gguf_vocab import _FILLER, CONTROL, NORMAL, PRE_TOKENIZERS, UNUSED, USER_DEFINED
from gptlab.tokenizer.hf_writer import to_tokenizer_json


def _comparable(obj: Any) -> Any:
    """A pre-tokenizer JSON object without ``trim_offsets``, which changes offsets but never ids."""
    if isinstance(obj, dict):
        return {k: _comparable(v) for k, v in obj.items() if k != "trim_offsets"}
    if isinstance(obj, list):
        return [_comparable(v) for v in obj]
    return obj


def pre_tokenizer_name(tok: BPETokenizer, tokenizer_json: dict[str, Any] | None = None) -> str:
    """The ``tokenizer.ggml.pre`` name that makes llama.cpp split text as ``tok`` does.

    Raises :class:`GptlabError` naming the pattern when llama.cpp has no recipe for it.
    """
    tj = tokenizer_json if tokenizer_json is not None else to_tokenizer_json(tok)
    mine = (tj["normalizer"], _comparable(tj["pre_tokenizer"]))
    for name, recipe in PRE_TOKENIZERS.items():  # canonical names come before their aliases
        if (recipe["normalizer"], _comparable(recipe["pre_tokenizer"])) != mine:
            continue
        # A merge-list tokenizer (a model's own) must also agree on ignore_merges, which llama.cpp sets
        # per recipe. A rank-ordered one (GPT-2's, or trained here) is a training record, where taking a
        # known pre-token whole and merging it give the same ids.
        if tok.merges is not None and bool(tok.ignore_merges) != bool(recipe["model"].get("ignore_merges")):
            continue
        return name
    what = f"pattern {tok.pattern!r}" if tok.pattern else f"pre-tokenizer {tj['pre_tokenizer']!r}"
    raise GptlabError(f"the {tok.name} tokenizer's {what} has no llama.cpp pre-tokenizer name "
                      f"(known: {', '.join(sorted(PRE_TOKENIZERS))}); it cannot be written to GGUF")


def gguf_vocab_fields(tok: Tokenizer, vocab_size: int) -> dict[str, Any]:
    """The ``tokenizer.*`` metadata of ``tok`` for a model with ``vocab_size`` ids, as ``{key: value}``.

    Ids the tokenizer does not use (a model's table rounded up) are filled as llama.cpp's converter
    fills them: ``[PAD<id>]``, typed unused. Raises :class:`GptlabError` for a tokenizer GGUF cannot
    hold (character or word level, an unknown pre-tokenizer, more ids than the model has).
    """
    if not isinstance(tok, BPETokenizer):
        raise GptlabError(f"the {type(tok).__name__} ({tok.name}) cannot be written to GGUF: llama.cpp reads "
                          "byte-level BPE vocabularies only; train with --tokenizer gpt2 or bpe:N, or export "
                          "with --format hf")
    if tok.n_vocab > vocab_size:
        raise GptlabError(f"the tokenizer has {tok.n_vocab} ids but the model's vocab_size is {vocab_size}")
    tj = to_tokenizer_json(tok)
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [UNUSED] * vocab_size
    for text, idx in tj["model"]["vocab"].items():
        filler = _FILLER.fullmatch(text)  # a GGUF vocabulary read back keeps its fillers: unused again
        tokens[idx], types[idx] = text, UNUSED if filler and int(filler.group(1)) == idx else NORMAL
    for added in tok.added_tokens:
        tokens[added.id], types[added.id] = added.content, CONTROL if added.special else USER_DEFINED
    fields: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre_tokenizer_name(tok, tj),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [f"{a} {b}" for a, b in tj["model"]["merges"]],
    }
    bos = tok.token_id(tok.bos_token)
    eos = tok.stop_ids[0] if tok.stop_ids else None
    pad = tok.token_id(tok.pad_token)
    for key, value in (("bos_token_id", bos), ("eos_token_id", eos), ("padding_token_id", pad)):
        if value is not None:
            fields[f"tokenizer.ggml.{key}"] = value
    # Written out, since llama.cpp's default depends on the recipe name (Llama 3's adds a BOS).
    fields["tokenizer.ggml.add_bos_token"] = bos is not None and tuple(tok.prefix_ids) == (bos,)
    fields["tokenizer.ggml.add_eos_token"] = eos is not None and tuple(tok.suffix_ids) == (eos,)
    if tok.chat_template:
        fields["tokenizer.chat_template"] = tok.chat_template
    return fields
