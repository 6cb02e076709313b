"""Training a byte-level BPE vocabulary: repeatedly merge the most frequent adjacent pair of tokens.

The text is split into pre-tokens (GPT-2's regex by default) and only their counts are kept, so a
corpus given as an iterable of chunks is streamed. Each distinct pre-token becomes a "word": a list
of token ids, starting as its UTF-8 bytes. Training then merges pairs inside words, never across.

A naive trainer recounts every pair of every word after each merge (minbpe does this: O(merges x
text)). Here each merge touches only the words that contain the merged pair, which is what makes
thousands of merges affordable in Python:

* ``counts[pair]``: how often the pair occurs, weighted by word frequency;
* ``where[pair]``: the words that contained the pair when it was counted (a superset: words that lost
  the pair are not removed, they are simply skipped when nothing is found in them);
* a max-heap of ``(-count, pair)`` with lazy invalidation: an entry whose count is out of date is
  re-pushed with the current count when popped, so the first up-to-date entry popped is the true
  maximum. Every increase of a count pushes a fresh entry, which keeps that guarantee.

A pair is an int, ``left << shift | right``, because int keys hash and compare faster than tuples.
Ties on count are broken by the smaller pair key, i.e. the smaller left id, then the smaller right id
(ids of bytes are the byte values, ids of merged tokens their creation order), so training is
deterministic and does not depend on the order of the input.

The result is tiktoken's ``mergeable_ranks`` (token bytes -> rank), in which a token's bytes must be
unique; see the comment at the merge step for why a merge never re-creates existing bytes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from heapq import heapify, heappop, heappush

import regex

from gptlab.errors import GptlabError
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN
from gptlab.tokenizer.pretokenize import Pretokenizer



class VocabTooLargeError(GptlabError):
    """The training text cannot make the vocabulary asked for; ``reachable`` is the largest it can make."""

    def __init__(self, reachable: int, message: str) -> None:
        super().__init__(message)
        self.reachable = reachable

def count_pretokens(
    text: str | Iterable[str], pattern: str = GPT2_PATTERN, special_tokens: Collection[str] = ()
) -> Counter[str]:
    """How often each pre-token of ``text`` (a string, or an iterable of strings split separately) occurs.

    The text of ``special_tokens`` is cut out first, so no ordinary token learns pieces of
    ``<|endoftext|>`` from documents joined with it (Hugging Face's trainer does the same).
    """
    split = Pretokenizer(pattern).split
    cut = None
    if special_tokens:
        # Longest first, so a special token that contains another is cut whole.
        alternatives = sorted(set(special_tokens), key=len, reverse=True)
        cut = regex.compile("|".join(regex.escape(t) for t in alternatives)).split
    counts: Counter[str] = Counter()
    if isinstance(text, str):
        text = (text,)
    for chunk in text:
        if not isinstance(chunk, str):
            raise GptlabError(
                f"BPE training text must be a str or an iterable of str; got a chunk of type {type(chunk).__name__}"
            )
        if cut is None:
            counts.update(split(chunk))
        else:
            for part in cut(chunk):
                counts.update(split(part))
    return counts


def train_bpe(
    text: str | Iterable[str],
    n_ordinary: int,
    pattern: str = GPT2_PATTERN,
    min_frequency: int = 2,
    progress: bool = False,
    *,
    special_tokens: Collection[str] = (),
) -> dict[bytes, int]:
    """Learn ``mergeable_ranks`` with exactly ``n_ordinary`` tokens: the 256 bytes, then one per merge.

    Args:
        text: the training text, or an iterable of chunks (documents, lines, file blocks). Each
            chunk is pre-tokenized on its own, so no pre-token spans two chunks; cuts between
            documents, or just before a whitespace character that follows a non-space (e.g. before
            a newline ending a line of text), give exactly the counts of the joined text.
        n_ordinary: number of ordinary tokens wanted (at least 256).
        pattern: pre-tokenization regex (``regex`` syntax).
        min_frequency: a pair occurring fewer times than this is never merged.
        progress: show a tqdm bar over the merges.
        special_tokens: the special tokens the caller adds after these ids. Their text is cut out
            of the training text, and errors are phrased in terms of the caller's
            ``vocab_size = n_ordinary + len(special_tokens)``.

    Raises:
        GptlabError: ``n_ordinary < 256``, empty text, or text with too few frequent pairs to make
            ``n_ordinary`` tokens (the message says how many it can make).
    """
    n_special = len(special_tokens)
    if n_ordinary < 256:
        raise GptlabError(
            f"vocab_size {n_ordinary + n_special} is too small: a byte-level BPE vocabulary needs at least "
            f"{256 + n_special} (256 single bytes + {n_special} special token{'' if n_special == 1 else 's'})"
        )
    try:
        word_counts = count_pretokens(text, pattern, special_tokens)
    except regex.error as exc:
        raise GptlabError(f"pre-tokenization pattern does not compile: {exc}") from None
    if not word_counts:
        raise GptlabError("BPE training text is empty (no text outside special tokens)")
    ranks = {bytes([b]): b for b in range(256)}
    n_merges = n_ordinary - 256
    if n_merges == 0:
        return ranks
    min_frequency = max(1, min_frequency)

    # Words: each distinct pre-token as a list of ids, with its count. One-byte words hold no pair.
    words: list[list[int]] = []
    freqs: list[int] = []
    for word, f in word_counts.items():
        try:
            ids = list(word.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates: replaced by U+FFFD, as the encoder does
            ids = list(word.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8"))
        if len(ids) > 1:
            words.append(ids)
            freqs.append(f)
    del word_counts

    shift = max(n_ordinary - 1, 1).bit_length()
    mask = (1 << shift) - 1
    counts: defaultdict[int, int] = defaultdict(int)
    where: defaultdict[int, set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        f = freqs[i]
        for x, y in zip(w, w[1:]):
            key = x << shift | y
            counts[key] += f
            where[key].add(i)
    heap = [(-c, key) for key, c in counts.items() if c >= min_frequency]
    heapify(heap)

    vocab: list[bytes] = [bytes([b]) for b in range(256)]  # id -> bytes
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_merges, desc="BPE merges", unit="merge")
    try:
        while len(vocab) < n_ordinary:
            # Pop the most frequent pair, re-pushing entries whose counts went down since they were pushed.
            while True:
                if not heap:
                    raise VocabTooLargeError(
                        len(vocab) + n_special,
                        f"the training text has too few distinct pairs occurring at least {min_frequency} "
                        f"times to reach vocab_size {n_ordinary + n_special}: it can reach "
                        f"{len(vocab) + n_special} ({len(vocab)} ordinary + {n_special} special); "
                        f"train on more text, lower min_frequency, or ask for at most that many"
                    )
                neg, key = heappop(heap)
                c = counts.get(key, 0)
                if c == -neg:
                    break
                if c >= min_frequency:
                    heappush(heap, (-c, key))
            a, b = key >> shift, key & mask
            merged = vocab[a] + vocab[b]
            z = ranks.get(merged)
            # Never two tokens with the same bytes (tiktoken requires unique bytes). With every word
            # merged by the same sequence this cannot occur (a byte string covered by two tokens
            # evolves as the string alone would, so it splits alike everywhere), but if it did, the
            # words reuse the existing id and no rank is spent, as Hugging Face's trainer does.
            if z is None:
                z = len(vocab)
                ranks[merged] = z
                vocab.append(merged)
                if bar is not None:
                    bar.update(1)
            grown = _merge_pair(words, freqs, where.pop(key), a, b, z, shift, counts, where)
            del counts[key]
            for k in grown:
                c = counts[k]
                if c >= min_frequency:
                    heappush(heap, (-c, k))
    finally:
        if bar is not None:
            bar.close()
    return ranks


def _merge_pair(
    words: list[list[int]],
    freqs: list[int],
    candidates: set[int],
    a: int,
    b: int,
    z: int,
    shift: int,
    counts: defaultdict[int, int],
    where: defaultdict[int, set[int]],
) -> set[int]:
    """Replace every ``a b`` by ``z`` in the candidate words, updating ``counts`` and ``where``.

    Occurrences are merged left to right without overlap (``a a a`` -> ``z a``), as in the encoder.
    Around each occurrence, ``(prev, a)`` becomes ``(prev, z)`` and ``(b, next)`` becomes
    ``(z, next)``; ``prev`` is read from the already rewritten word, so two adjacent occurrences give
    ``(z, z)`` and never an ``(a, z)`` that does not exist. The count of ``a b`` itself is deleted
    by the caller. Returns the pairs whose counts grew (they need fresh heap entries).
    """
    grown: set[int] = set()
    zl = z << shift  # z as the left half of a pair key
    for i in candidates:
        w = words[i]
        n = len(w)
        # Cheap rejection: most stale candidates no longer hold ``a`` followed by ``b`` at all.
        try:
            j = w.index(a)
        except ValueError:
            continue
        f = freqs[i]
        out = w[:j]
        found = False
        while j < n:
            if w[j] == a and j + 1 < n and w[j + 1] == b:
                found = True
                if out:
                    prev = out[-1]
                    old = prev << shift | a
                    counts[old] -= f
                    new = prev << shift | z
                    counts[new] += f
                    where[new].add(i)
                    grown.add(new)
                if j + 2 < n:
                    nxt = w[j + 2]
                    # If another ``a b`` follows, the (z, a) counted here is taken back as its
                    # ``(prev, a)`` on the next step, which counts (z, z) instead.
                    old = b << shift | nxt
                    counts[old] -= f
                    new = zl | nxt
                    counts[new] += f
                    where[new].add(i)
                    grown.add(new)
                out.append(z)
                j += 2
            else:
                out.append(w[j])
                j += 1
        if found:
            words[i] = out
    return grown
