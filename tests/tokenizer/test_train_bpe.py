"""BPE training (gptlab.tokenizer.train) against a naive reference trainer, HF tokenizers and tiktoken."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from unittest import mock

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.errors import GptlabError
from gptlab.tokenizer import ENDOFTEXT, GPT2_PATTERN, BPETokenizer
from gptlab.tokenizer.bpe import bytes_to_unicode
from gptlab.tokenizer.train import count_pretokens, train_bpe


def _read(shared_data, name: str) -> str:
    return (shared_data / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shakespeare(shared_data) -> str:
    return _read(shared_data, "tinyshakespeare.txt")


@pytest.fixture(scope="module")
def verdict(shared_data) -> str:
    return _read(shared_data, "the-verdict.txt")


def _multilingual(n_words: int = 6000, seed: int = 0) -> str:
    """Deterministic text with many multi-byte characters, so merges form non-ASCII (and partial) tokens."""
    rng = random.Random(seed)
    words = ["naïve", "café", "中文", "日本語", "привет", "Ωμέγα", "😀", "👍🏽", "١٢٣", "ñandú", "straße", "über"]
    words += ["the", "and"]
    seps = [" ", " ", " ", "\n", ", ", ". ", "  "]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n_words))


@pytest.fixture(scope="module")
def trained(shakespeare) -> BPETokenizer:
    return BPETokenizer.train(shakespeare, 2048)


@pytest.fixture(scope="module")
def trained_unicode(shared_data) -> BPETokenizer:
    return BPETokenizer.train([_read(shared_data, "instruction-data.json"), _multilingual()], 1200)


def _tiktoken_from_saved(tok: BPETokenizer, path):
    """tiktoken's Encoding from the tokenizer's saved ranks file (not from its in-memory ranks)."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    tok.save(path, format="tiktoken")
    with mock.patch.dict(os.environ, {"TIKTOKEN_CACHE_DIR": ""}):  # no copy into tiktoken's /tmp cache
        ranks = load_tiktoken_bpe(str(path))
    return tiktoken.Encoding("trained", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens)


# ----------------------------------------------------------------------------- a naive reference
def naive_train(text: str, n_ordinary: int, min_frequency: int = 2, pattern: str = GPT2_PATTERN):
    """Textbook BPE: recount every pair after every merge; ties go to the smallest (left id, right id).

    Returns the ranks and, per merge, whether the winning count was shared by another pair.
    """
    words = Counter(tuple(w.encode("utf-8")) for w in regex.findall(pattern, text))
    vocab = [bytes([i]) for i in range(256)]
    ties = []
    while len(vocab) < n_ordinary:
        pairs: Counter = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        top = max(pairs.values(), default=0)
        if top < min_frequency:
            raise ValueError(f"can make only {len(vocab)} tokens")
        best = min(p for p, c in pairs.items() if c == top)
        ties.append(sum(c == top for c in pairs.values()) > 1)
        z = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        merged: Counter = Counter()
        for w, f in words.items():
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(z)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            merged[tuple(out)] += f
        words = merged
    return {tok: i for i, tok in enumerate(vocab)}, ties


def test_matches_naive_trainer_on_the_verdict(verdict):
    ranks, ties = naive_train(verdict, 700)
    assert any(ties)  # the tie-breaking rule is exercised, not only the counting
    assert train_bpe(verdict, 700) == ranks


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(st.text(alphabet="abc ", min_size=1, max_size=10), min_size=1, max_size=40),
    n_merges=st.integers(1, 30),
)
def test_matches_naive_trainer_on_small_texts(words, n_merges):
    """Tiny alphabets make many overlapping runs (``aaa``) and ties; min_frequency 1 merges until exhausted."""
    text = " ".join(words)
    try:
        expected, _ = naive_train(text, 256 + n_merges, min_frequency=1)
    except ValueError:
        with pytest.raises(GptlabError, match="too few distinct pairs"):
            train_bpe(text, 256 + n_merges, min_frequency=1)
        return
    assert train_bpe(text, 256 + n_merges, min_frequency=1) == expected


# ----------------------------------------------------------------------------- vocabulary shape
@pytest.mark.parametrize("vocab_size", [257, 258, 1000, 8192])
def test_exactly_vocab_size_entries_with_specials_last(shakespeare, vocab_size):
    tok = BPETokenizer.train(shakespeare, vocab_size)
    n_ordinary = vocab_size - 1
    assert tok.n_vocab == vocab_size
    # Unique bytes with ranks exactly 0..n-1, bytes first with id = byte value.
    assert sorted(tok.mergeable_ranks.values()) == list(range(n_ordinary))
    assert all(tok.mergeable_ranks[bytes([b])] == b for b in range(256))
    assert tok.special_tokens == {ENDOFTEXT: n_ordinary} and tok.eot_id == vocab_size - 1


def test_several_specials_get_the_last_ids_in_order(verdict):
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>"]
    tok = BPETokenizer.train(verdict, 400, special_tokens=specials)
    assert tok.n_vocab == 400 and len(tok.mergeable_ranks) == 397
    assert tok.special_tokens == {"<|endoftext|>": 397, "<|pad|>": 398, "<|im_start|>": 399}
    assert tok.encode("a<|pad|>b", allowed_special="all") == tok.encode("a") + [398] + tok.encode("b")


def test_special_token_text_is_not_learned(verdict):
    text = ENDOFTEXT.join(verdict.split("\n\n"))  # documents joined by <|endoftext|>, ~100 of them
    with_specials = BPETokenizer.train(text, 600)
    without = BPETokenizer.train(text, 600, special_tokens=())
    # Without the cut, the frequent special text does become ordinary tokens (so this test can fail).
    assert {b"<|", b"|>"} <= set(without.mergeable_ranks)
    assert not any(b"<|" in t or b"|>" in t or b"oftext" in t for t in with_specials.mergeable_ranks)
    assert with_specials.encode(text, allowed_special="all").count(with_specials.eot_id) == text.count(ENDOFTEXT)


# ----------------------------------------------------------------------------- tiktoken parity
@pytest.mark.parametrize(
    "name", ["the-verdict.txt", "tinyshakespeare.txt", "SMSSpamCollection.tsv", "instruction-data.json"]
)
def test_tiktoken_on_saved_ranks_gives_identical_ids(trained, trained_unicode, tmp_path, shared_data, name):
    text = _read(shared_data, name)
    for i, tok in enumerate((trained, trained_unicode)):
        enc = _tiktoken_from_saved(tok, tmp_path / f"tok{i}.tiktoken")
        assert tok.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def test_tiktoken_parity_on_sotu_and_multilingual(trained, trained_unicode, tmp_path, shared_data):
    texts = [_read(shared_data, "sotu.txt")[:1_500_000], _multilingual(3000, seed=1)]
    for i, tok in enumerate((trained, trained_unicode)):
        enc = _tiktoken_from_saved(tok, tmp_path / f"tok{i}.tiktoken")
        for text in texts:
            assert tok.encode(text) == enc.encode(text)


def test_tiktoken_parity_with_a_custom_pattern(verdict, tmp_path):
    tok = BPETokenizer.train(verdict, 600, pattern=r"\S+|\s+")
    enc = _tiktoken_from_saved(tok, tmp_path / "ws.tiktoken")
    assert tok.pattern == r"\S+|\s+"
    assert tok.encode(verdict) == enc.encode(verdict)
    assert any(b"," in t and len(t) > 2 for t in tok.mergeable_ranks)  # words keep punctuation here


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiktoken_pair(trained, trained_unicode, tmp_path_factory):
    d = tmp_path_factory.mktemp("ranks")
    return [(tok, _tiktoken_from_saved(tok, d / f"{i}.tiktoken")) for i, tok in enumerate((trained, trained_unicode))]


@_SETTINGS
@given(text=st.one_of(st.text(), st.text(alphabet="aé 中\n😀'sx1", max_size=60)))
def test_round_trip_and_tiktoken_on_random_text(tiktoken_pair, text):
    for tok, enc in tiktoken_pair:
        ids = tok.encode(text, disallowed_special=())
        assert tok.decode(ids) == text
        assert ids == enc.encode(text, disallowed_special=())


# ----------------------------------------------------------------------------- streaming and determinism
def test_streamed_chunks_give_the_same_tokenizer_as_the_joined_text(shakespeare):
    # Lines, each cut just before its newline where text precedes it: a pre-token ends there.
    # (A plain splitlines() would not do: "foo  \n" alone splits as "  \n", in context as "  ", "\n".)
    chunks = re.split(r"(?<=\S)(?=\n)", shakespeare)
    assert len(chunks) > 30_000 and "".join(chunks) == shakespeare
    assert count_pretokens(chunks) == count_pretokens(shakespeare)  # the precondition, checked
    joined = train_bpe(shakespeare, 1500)
    assert train_bpe(iter(chunks), 1500) == joined  # a one-pass iterator, as from a file
    shuffled = chunks[:]
    random.Random(0).shuffle(shuffled)
    assert train_bpe(shuffled, 1500) == joined  # ties do not depend on the order of the text


# ----------------------------------------------------------------------------- against HF tokenizers
def _hf_merges(text: str, vocab_size: int) -> list[bytes]:
    """The token each of HF BpeTrainer's merges makes, on GPT-2's pre-tokenization (bytes)."""
    from gptlab.bench.tokenizer import hf_bpe_trainer

    tok, trainer = hf_bpe_trainer(vocab_size)
    tok.train_from_iterator([text], trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return [bytes(byte_of[c] for c in "".join(m.split(" ") if isinstance(m, str) else m)) for m in merges]


def _pair_counts_after(text: str, merges: list[bytes]) -> Counter:
    """Pair counts (as concatenated bytes) after applying ``merges`` the textbook way."""
    words = Counter(tuple(bytes([b]) for b in w.encode("utf-8")) for w in regex.findall(GPT2_PATTERN, text))
    for token in merges:
        merged: Counter = Counter()
        for w, f in words.items():
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] + w[j + 1] == token:
                    out.append(token)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            merged[tuple(out)] += f
        words = merged
    counts: Counter = Counter()
    for w, f in words.items():
        for a, b in zip(w, w[1:]):
            counts[a + b] += f
    return counts


@pytest.mark.parametrize("corpus,vocab_size,min_agree", [("verdict", 600, 20), ("shakespeare", 500, 80)])
def test_same_merges_as_hf_until_a_tie(request, corpus, vocab_size, min_agree):
    """HF breaks ties by its own ids, so the merge lists must agree exactly up to the first tie.

    Where they first differ, both choices must have the same (maximal) count at that point.
    """
    text = request.getfixturevalue(corpus)
    hf = _hf_merges(text, vocab_size)
    ranks = train_bpe(text, vocab_size - 1)
    ours = sorted(ranks, key=ranks.get)[256:]
    assert len(ours) == len(hf) == vocab_size - 257
    n = next((i for i, (a, b) in enumerate(zip(ours, hf)) if a != b), len(ours))
    assert n >= min_agree
    if n < len(ours):
        counts = _pair_counts_after(text, ours[:n])
        top = max(counts.values())
        assert counts[ours[n]] == top and counts[hf[n]] == top


# ----------------------------------------------------------------------------- bad input
def test_vocab_size_too_small_names_size_and_minimum(verdict):
    with pytest.raises(GptlabError, match=r"vocab_size 200 is too small.* at least 257"):
        BPETokenizer.train(verdict, 200)
    with pytest.raises(GptlabError, match=r"vocab_size 257 is too small.* at least 258"):
        BPETokenizer.train(verdict, 257, special_tokens=["<|a|>", "<|b|>"])
    assert BPETokenizer.train(verdict, 256, special_tokens=()).n_vocab == 256  # the bytes alone


@pytest.mark.parametrize("text", ["", [], ["", ""], ENDOFTEXT * 3])
def test_empty_text_is_an_error(text):
    with pytest.raises(GptlabError, match="empty"):
        BPETokenizer.train(text, 300)


def test_unreachable_size_says_what_can_be_reached(verdict):
    with pytest.raises(GptlabError, match=r"it can reach \d+") as info:
        BPETokenizer.train(verdict, 50_000)
    reachable = int(re.search(r"it can reach (\d+)", str(info.value)).group(1))
    assert BPETokenizer.train(verdict, reachable).n_vocab == reachable
    with pytest.raises(GptlabError, match=f"it can reach {reachable}"):
        BPETokenizer.train(verdict, reachable + 1)


def test_non_str_chunks_and_bad_pattern_are_errors():
    with pytest.raises(GptlabError, match="iterable of str"):
        BPETokenizer.train([b"bytes"], 300)
    with pytest.raises(GptlabError, match="pattern"):
        BPETokenizer.train("some text", 300, pattern="(unclosed")


def test_progress_bar_counts_merges(verdict, capsys):
    BPETokenizer.train(verdict, 300, progress=True)
    err = capsys.readouterr().err
    assert "BPE merges" in err and "43/43" in err
