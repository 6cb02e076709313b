"""Real models' tokenizers in gptlab's engine: Llama 3, Qwen2/2.5/3, Qwen3.5, StarCoder, DeepSeek, GPT-2.

The vocabularies are llama.cpp's vocab-only GGUF files (../shared/data/llama-vocab), turned into the
``tokenizer.json`` each model publishes (gptlab.tokenizer.gguf_vocab). Three references:

* the ``.inp``/``.out`` vectors: the ids each model's own Hugging Face tokenizer gives;
* the ``tokenizers`` library on the same tokenizer.json, over every text in ../shared/data, generated
  text, and every Unicode code point;
* transformers' ``PreTrainedTokenizerFast`` for special tokens (``add_special_tokens``, split or not).
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.tokenizer import load_tokenizer
from gptlab.tokenizer.hf_json import from_tokenizer_json

tokenizers = pytest.importorskip("tokenizers")
from gptlab.tokenizer.gguf_vocab import read_gguf_vocab  # noqa: E402

VOCABS = ("gpt-2", "llama-bpe", "qwen2", "qwen35", "starcoder", "deepseek-llm")
TEXTS = ("the-verdict.txt", "tinyshakespeare.txt", "sotu.txt", "instruction-data.json", "SMSSpamCollection.tsv")
_CACHE: dict[str, tuple] = {}


def _pair(shared_data, name: str):
    """(ours, reference `tokenizers.Tokenizer`, tokenizer.json dict, config), built once per vocabulary."""
    if name not in _CACHE:
        payload, config = read_gguf_vocab(shared_data / "llama-vocab" / f"ggml-vocab-{name}.gguf")
        ours = from_tokenizer_json(payload, name, config, name=name)
        _CACHE[name] = (ours, tokenizers.Tokenizer.from_str(json.dumps(payload)), payload, config)
    return _CACHE[name]


def _vectors(shared_data, name: str) -> list[tuple[str, list[int]]]:
    base = shared_data / "llama-vocab" / f"ggml-vocab-{name}.gguf"
    texts = base.with_name(base.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = base.with_name(base.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", VOCABS)
def test_model_test_vectors(shared_data, name):
    ours, _, payload, _ = _pair(shared_data, name)
    lossless = payload.get("normalizer") is None
    vectors = _vectors(shared_data, name)
    assert len(vectors) >= 40
    for text, ids in vectors:
        assert ours.encode(text, allowed_special="all") == ids, repr(text)
        back = ours.decode(ids)
        assert back == (text if lossless else unicodedata.normalize("NFC", text)), repr(text)


@pytest.mark.parametrize("name", VOCABS)
def test_identical_to_tokenizers_on_shared_data(shared_data, name):
    ours, ref, _, _ = _pair(shared_data, name)
    for file in TEXTS:
        text = (shared_data / file).read_text(encoding="utf-8")
        assert ours.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids, file


# Pieces that exercise each pre-tokenizer's rules: contractions in any case, digit runs, whitespace
# runs and line breaks, marks, CJK, and look-alikes of the models' special tokens.
PIECES = st.sampled_from([
    "'s", "'S", "'ll", "'LL", "'re", "'ve", "'m", "'d", "'t", "n't", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n ",
    "1", "12", "123", "1234", "12345", "٣", "½", "Ⅻ", "a", "A", "ab", "É", "e\u0301", "ß", "ſ", "K", "中文", "日本語",
    "한국어", "ø", "ö", "ÿ", "🙂", "👍🏽", "\u200d", "<", "|", "<|", "|>", "<|im_end|", "<|im_end|>", "<|eot_id|>",
    "<|begin_of_text", "<｜begin▁of▁sentence｜>", "<fim_prefix>", "<|endoftext|>", "[PAD151646]", ".", "...", "!?", "-",
    "_", "$", "\\", "/", "://", "é", "\u00a0", "\u3000", "\x0b", "\x85",
])


@pytest.mark.parametrize("name", VOCABS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PIECES | st.text(max_size=6), max_size=16))
def test_identical_to_tokenizers_on_generated_text(shared_data, name, parts):
    ours, ref, _, _ = _pair(shared_data, name)
    text = "".join(parts)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids


@pytest.mark.slow
@pytest.mark.parametrize("name", [v for v in VOCABS if v != "gpt-2"])  # GPT-2's: test_bpe_gpt2 vs tiktoken
def test_every_code_point_in_one_sweep(shared_data, name, code_points):
    """Every Unicode scalar value, in contexts that tell letters, numbers, marks and spaces apart.

    (This is how Digits' Unicode tables were found to be neither Oniguruma's nor `regex`'s.)"""
    ours, ref, _, _ = _pair(shared_data, name)
    chars = code_points
    for i in range(0, len(chars), 8192):
        text = "".join(f" {c}a{c}1'{c}\n" for c in chars[i : i + 8192])
        assert ours.encode(text, allowed_special="all") == ref.encode(text, add_special_tokens=False).ids, \
            f"block from U+{ord(chars[i]):04X}"


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "deepseek-llm", "starcoder"])
def test_special_tokens_behave_as_in_transformers(shared_data, name):
    transformers = pytest.importorskip("transformers")
    ours, ref, _, config = _pair(shared_data, name)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ref, bos_token=config["bos_token"], eos_token=config["eos_token"])
    specials = sorted(ours.special_tokens)[:3] + [config["eos_token"]]
    text = f"Hello{specials[0]} world{specials[1]}\n{specials[-1]}end"
    assert ours.encode(text, allowed_special="all", add_special_tokens=True) == fast.encode(text)
    assert ours.encode(text, allowed_special="all") == fast.encode(text, add_special_tokens=False)
    fast_split = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(ref.to_str()), split_special_tokens=True)
    assert ours.encode(text, disallowed_special=()) == fast_split.encode(text, add_special_tokens=False)


def test_gguf_file_loads_directly_with_its_template(shared_data):
    tok = load_tokenizer(shared_data / "llama-vocab" / "ggml-vocab-qwen2.gguf")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|endoftext|>" and tok.token_id("<|im_end|>") == 151645
