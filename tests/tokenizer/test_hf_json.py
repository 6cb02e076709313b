"""Hugging Face tokenizer.json in gptlab's engine: read, written, and identical to `tokenizers`.

The files here are built by `tokenizers` itself (GPT-2's vocabulary from ../shared/data, with the
pre-tokenizers, normalizers and added-token flags real models use), so every comparison is against
the library that defines the format. The real models' vocabularies are tested in test_model_vocabs.py.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptlab.errors import GptlabError
from gptlab.tokenizer import BPETokenizer, gpt2_tokenizer, load_tokenizer
from gptlab.tokenizer.hf_json import from_tokenizer_json
from gptlab.tokenizer.hf_writer import recover_merges, to_tokenizer_json
from gptlab.tokenizer.pipeline import Split
from gptlab.tokenizer.registry import GPT2_FILES

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # noqa: E402

TEXTS = ("the-verdict.txt", "tinyshakespeare.txt", "sotu.txt", "instruction-data.json")


def _gpt2_files():
    from gptlab.downloads import cached_file

    return [str(cached_file(f)) for f in GPT2_FILES]


def _hf_gpt2(pre=None, normalizer=None, added=()) -> Tokenizer:
    """GPT-2's vocabulary in a `tokenizers` Tokenizer, with a chosen pre-tokenizer/normalizer/added tokens."""
    enc, bpe = _gpt2_files()
    tk = Tokenizer(models.BPE.from_file(enc, bpe))
    tk.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    for tok in added:
        if tok.special:
            tk.add_special_tokens([tok])
        else:
            tk.add_tokens([tok])
    return tk


def _ours(tk: Tokenizer) -> BPETokenizer:
    return from_tokenizer_json(json.loads(tk.to_str()), "test tokenizer.json")


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.fixture(scope="module")
def corpus(shared_data) -> list[str]:
    return [(shared_data / name).read_text(encoding="utf-8") for name in TEXTS]


def test_gpt2_tokenizer_json_equals_tokenizers_and_tiktoken(corpus):
    tk = _hf_gpt2()
    ours = _ours(tk)
    assert ours.merges is None  # a plain training record: tiktoken's rule, and its accelerator, apply
    assert ours.to_tiktoken() is not None
    for text in corpus:
        assert ours.encode_ordinary(text) == tk.encode(text, add_special_tokens=False).ids
        assert ours.encode_ordinary(text) == gpt2_tokenizer().encode_ordinary(text)


def test_llama3_style_pipeline_with_nfc_and_digits(corpus):
    """Split(regex) + Digits + ByteLevel(no regex), NFC: the structure of Llama 3's and Qwen's files."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk = _hf_gpt2(pre, normalizers.NFC())
    ours = _ours(tk)
    for text in corpus:
        assert ours.encode_ordinary(text) == tk.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("behavior", ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"])
@pytest.mark.parametrize("invert", [False, True])
@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab 1,.\n-"), max_size=30))
def test_split_behaviors_match_tokenizers(behavior, invert, text):
    ref = pre_tokenizers.Split(Regex(r"[,.\-]+| "), behavior=behavior, invert=invert)
    ours = Split(r"[,.\-]+| ", behavior, invert)
    assert ours(text) == [p for p, _ in ref.pre_tokenize_str(text)]


ADDED = (
    AddedToken("<tool_call>", special=False, normalized=False),
    AddedToken("<|im_end|>", special=True, normalized=False, rstrip=True),
    AddedToken("<mask>", special=True, lstrip=True, normalized=False),
    AddedToken("word", special=False, single_word=True, normalized=False),
    AddedToken("ñ", special=False, normalized=True),
)
ADDED_ALPHABET = st.sampled_from(["<tool_call>", "<|im_end|>", "<mask>", "word", "ñ", "n\u0303", " ", "  ", "\n",
                                  "a", "words", "_", "é", "<", "|"])


_FLAGGED: list = []


def _flagged() -> tuple[Tokenizer, Tokenizer, BPETokenizer]:
    """Built once: hypothesis runs the test body many times."""
    if not _FLAGGED:
        tk = _hf_gpt2(normalizer=normalizers.NFC(), added=ADDED)
        split = Tokenizer.from_str(tk.to_str())
        split.encode_special_tokens = True  # transformers' split_special_tokens=True
        _FLAGGED.extend([tk, split, _ours(tk)])
    return tuple(_FLAGGED)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(ADDED_ALPHABET, max_size=12))
def test_added_token_flags_match_tokenizers(parts):
    """Non-special tokens always match; lstrip/rstrip swallow whitespace; single_word needs word
    boundaries; a normalized token matches after NFC (n + combining tilde is ñ)."""
    tk, split, ours = _flagged()
    text = "".join(parts)
    assert ours.encode(text, allowed_special="all") == tk.encode(text, add_special_tokens=False).ids
    # split_special_tokens: special text as ordinary text, while the other added tokens still match
    assert ours.encode(text, disallowed_special=()) == split.encode(text, add_special_tokens=False).ids


def test_special_tokens_follow_allowed_special(corpus):
    tk = _hf_gpt2(added=(AddedToken("<|im_start|>", special=True, normalized=False),))
    ours = _ours(tk)
    text = "a<|im_start|>b<|endoftext|>"
    with pytest.raises(GptlabError, match="special token"):
        ours.encode(text)
    assert ours.encode(text, allowed_special="all") == tk.encode(text).ids
    split = Tokenizer.from_str(tk.to_str())
    split.encode_special_tokens = True  # <|endoftext|> as ordinary text, as in the reference
    assert ours.encode(text, allowed_special={"<|im_start|>"}, disallowed_special=()) == (
        tk.encode("a<|im_start|>b").ids + split.encode("<|endoftext|>").ids)
    assert len(split.encode("<|endoftext|>").ids) > 1


def test_post_processor_prefix_is_added_on_request():
    enc = json.loads(_hf_gpt2(added=(AddedToken("<|begin_of_text|>", special=True),)).to_str())
    bos = next(t["id"] for t in enc["added_tokens"] if t["content"] == "<|begin_of_text|>")
    enc["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}},
    }
    tk = Tokenizer.from_str(json.dumps(enc))
    ours = from_tokenizer_json(enc, "t")
    assert ours.prefix_ids == (bos,)
    assert ours.encode("Hi there", add_special_tokens=True) == tk.encode("Hi there").ids
    assert ours.encode("Hi there") == tk.encode("Hi there", add_special_tokens=False).ids


def _trained(corpus) -> BPETokenizer:
    return BPETokenizer.train(corpus[1][:300_000], 1000, special_tokens=["<|endoftext|>", "<|pad|>"])


def test_trained_tokenizer_saves_as_tokenizer_json_tokenizers_reads(corpus, tmp_path):
    tok = _trained(corpus)
    tok.save(tmp_path / "tokenizer.json")
    tk = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in corpus:
        assert tk.encode(text, add_special_tokens=False).ids == tok.encode_ordinary(text)
    back = load_tokenizer(tmp_path)
    assert back.mergeable_ranks == tok.mergeable_ranks and back.special_tokens == tok.special_tokens
    assert back.encode_ordinary(corpus[0]) == tok.encode_ordinary(corpus[0])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_trained_tokenizer_json_matches_tokenizers_on_any_text(tmp_path_factory, shared_data, text):
    tk, tok = _trained_pair(shared_data, tmp_path_factory)
    text = text.replace("<|endoftext|>", "").replace("<|pad|>", "")
    assert tk.encode(text, add_special_tokens=False).ids == tok.encode_ordinary(text)


_PAIR: list = []


def _trained_pair(shared_data, tmp_path_factory):
    if not _PAIR:
        tok = BPETokenizer.train((shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000], 1000)
        path = tmp_path_factory.mktemp("trained") / "tokenizer.json"
        tok.save(path)
        _PAIR.extend([Tokenizer.from_file(str(path)), tok])
    return _PAIR


def test_transformers_fast_tokenizer_loads_our_folder(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptlab.tokenizer.hf_writer import save_pretrained_tokenizer

    tok = _trained(corpus)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"
    save_pretrained_tokenizer(tok, tmp_path)
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert fast.eos_token == "<|endoftext|>"
    for text in corpus:
        assert fast.encode(text[:20000]) == tok.encode_ordinary(text[:20000])
    assert fast.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi<|endoftext|>"
    again = load_tokenizer(tmp_path)
    assert again.chat_template == tok.chat_template and again.eos_token == "<|endoftext|>"


def test_recovered_merges_rebuild_the_ranks():
    gpt2 = gpt2_tokenizer()
    merges = recover_merges(gpt2.mergeable_ranks)
    assert len(merges) == len(gpt2.mergeable_ranks) - 256
    _, bpe = _gpt2_files()
    # GPT-2's own merge list (vocab.bpe), in the same order
    from gptlab.tokenizer.bpe import bytes_to_unicode

    dec = {c: b for b, c in bytes_to_unicode().items()}
    lines = [ln for ln in open(bpe, encoding="utf-8").read().split("\n")[1:] if ln]
    assert merges[:2000] == [tuple(bytes(dec[c] for c in part) for part in ln.split(" ")) for ln in lines[:2000]]


def test_pair_engine_equals_rank_engine_when_both_apply(corpus):
    """The merge-list code path (forced) gives GPT-2's ids too, short and long pieces alike."""
    gpt2 = gpt2_tokenizer()
    payload = to_tokenizer_json(gpt2)
    forced = from_tokenizer_json(payload, "t")
    assert forced.merges is None
    pair = BPETokenizer(gpt2.mergeable_ranks, gpt2.special_tokens, merges=None)
    from gptlab.tokenizer.bpe import _PairPieceCache
    from gptlab.tokenizer.merge import PAIR_SHIFT

    table = {}
    for prio, (a, b) in enumerate(recover_merges(gpt2.mergeable_ranks)):
        table[gpt2.mergeable_ranks[a] << PAIR_SHIFT | gpt2.mergeable_ranks[b]] = prio << PAIR_SHIFT | gpt2.mergeable_ranks[a + b]
    pair._cache = _PairPieceCache(gpt2.mergeable_ranks, table, [gpt2.mergeable_ranks[bytes([i])] for i in range(256)], False)
    for text in corpus[:2] + ["a" * 500 + " " + "ab" * 300 + " 1234567890" * 20]:
        assert pair.encode_ordinary(text) == gpt2.encode_ordinary(text)


# ----------------------------------------------------------------------------------------- refusals
def _write(tmp_path, tk: Tokenizer):
    tk.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.mark.parametrize("kind", ["unigram", "wordpiece", "byte_fallback", "metaspace"])
def test_other_tokenizer_types_are_refused_in_one_line(tmp_path, kind):
    if kind == "unigram":
        tk = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0))
    elif kind == "wordpiece":
        tk = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    elif kind == "byte_fallback":
        tk = Tokenizer(models.BPE({"<unk>": 0, "a": 1, "b": 2, "ab": 3}, [("a", "b")], byte_fallback=True, unk_token="<unk>"))
    else:
        tk = Tokenizer(models.BPE({"▁a": 0, "▁": 1, "a": 2}, [("▁", "a")]))
        tk.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(GptlabError) as err:
        load_tokenizer(_write(tmp_path, tk))
    msg = str(err.value)
    assert "\n" not in msg and "tokenizer.json" in msg
    assert "byte-level BPE" in msg


def test_cli_refuses_a_sentencepiece_tokenizer_with_exit_2(tmp_path, capsys):
    from gptlab.app import main

    tk = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0))
    _write(tmp_path, tk)
    assert main(["tokenize", "--tokenizer", str(tmp_path / "tokenizer.json"), "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Unigram" in err
