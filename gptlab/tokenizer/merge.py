"""Byte-pair merging of one pre-token: the inner loop of BPE encoding.

Both functions implement tiktoken's rule exactly: start from single bytes, then repeatedly merge the
adjacent pair whose concatenation has the lowest rank in ``ranks`` (the leftmost on ties), until no
adjacent pair is a token. For GPT-2's vocabulary a token's rank is its id.

Two implementations, because pre-tokens come in two very different populations:

* almost all are short words (a handful of bytes), where a plain rescan of the pairs after each merge
  is the fastest thing Python can do;
* a few are pathological runs (``"a" * 100_000``, a minified blob) where that rescan is quadratic, so
  long pieces go through a heap of candidate pairs over a linked list: O(n log n).
"""

from __future__ import annotations

import heapq

# Above this many bytes the heap version wins (measured on GPT-2's vocabulary: the quadratic
# loop is faster up to a few dozen bytes, and real text has few pre-tokens that long).
LONG_PIECE = 48
# Larger than any real rank, so ``min`` needs no None checks.
_NOT_A_TOKEN = 1 << 62


def merge_short(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Token ids of ``piece``: rescan for the best pair, merge, update its two neighbours. O(n^2).

    ``pair_ranks[i]`` is the rank of ``parts[i] + parts[i + 1]`` (``_NOT_A_TOKEN`` when that is no
    token); ``min`` and ``index`` run in C and find the leftmost lowest rank, and a merge changes
    only the two pairs that touch the merged token. Fastest for the short pieces of real text.
    """
    get = ranks.get
    parts = [piece[i : i + 1] for i in range(len(piece))]
    pair_ranks = [get(parts[i] + parts[i + 1], _NOT_A_TOKEN) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NOT_A_TOKEN:
            break
        i = pair_ranks.index(best)
        merged = parts[i] + parts[i + 1]
        parts[i] = merged
        del parts[i + 1]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = get(merged + parts[i + 1], _NOT_A_TOKEN)
        if i:
            pair_ranks[i - 1] = get(parts[i - 1] + merged, _NOT_A_TOKEN)
    return [ranks[p] for p in parts]


def merge_long(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Token ids of ``piece`` with a heap of candidate merges: O(n log n) for any input.

    Nodes are the current tokens, identified by their start offset; ``end[s]`` is where the token
    starting at ``s`` ends and ``prev[s]`` the start of the token before it. A heap entry
    ``(rank, s, e)`` proposes merging the token at ``s`` with its right neighbour into ``piece[s:e]``.
    Entries go stale when a neighbour merges; a stale entry is recognised (its left token is gone or
    no longer spans to ``e`` with its neighbour) and skipped. Because the key is (rank, start), the
    heap pops exactly the pair tiktoken's rescan would pick: lowest rank, then leftmost.
    """
    n = len(piece)
    get = ranks.get
    end = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for s in range(n - 1):
        rank = get(piece[s : s + 2])
        if rank is not None:
            heap.append((rank, s, s + 2))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        rank, s, e = pop(heap)
        if not alive[s]:
            continue
        m = end[s]
        if m >= n or end[m] != e:
            continue  # stale: the left token or its neighbour changed since this was pushed
        # Merge the token at m into the token at s.
        alive[m] = False
        end[s] = e
        if e < n:
            prev[e] = s
            r = get(piece[s : end[e]])
            if r is not None:
                push(heap, (r, s, end[e]))
        p = prev[s]
        if p >= 0:
            r = get(piece[p:e])
            if r is not None:
                push(heap, (r, p, e))
    out = []
    s = 0
    while s < n:
        out.append(ranks[piece[s : end[s]]])
        s = end[s]
    return out


def merge_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Token ids of one pre-token, choosing the faster exact algorithm for its length."""
    if len(piece) > LONG_PIECE:
        return merge_long(piece, ranks)
    return merge_short(piece, ranks)


# ------------------------------------------------------------------------------------------------
# Merge-list BPE (Hugging Face's rule): the same loop, but what may merge is a *pair of tokens* listed
# in ``merges``, and the pair listed first wins (leftmost on ties). tiktoken's rule above asks only
# whether the concatenation is a token; the two agree on vocabularies trained by plain BPE, but not
# on converted ones such as Llama 3's, whose merges list several pairs per token.
#
# A pair table maps ``left_id << PAIR_SHIFT | right_id`` to ``priority << PAIR_SHIFT | merged_id``,
# so ``min`` over the values picks the highest-priority pair and the merged id is in the low bits.
PAIR_SHIFT = 24  # ids below 16.7M: every real vocabulary
_ID_MASK = (1 << PAIR_SHIFT) - 1


def merge_pairs_short(ids: list[int], pairs: dict[int, int]) -> list[int]:
    """Apply merge-list BPE to the token ids of one pre-token (rescan version, O(n^2)); mutates ``ids``."""
    get = pairs.get
    shift = PAIR_SHIFT
    return _merge_rescan(ids, [get(ids[i] << shift | ids[i + 1], _NOT_A_TOKEN) for i in range(len(ids) - 1)], pairs)


def _merge_rescan(ids: list[int], values: list[int], pairs: dict[int, int]) -> list[int]:
    """The rescan loop of merge-list BPE: ``values[i]`` is the pair value of ``ids[i]`` and ``ids[i + 1]``."""
    get = pairs.get
    shift = PAIR_SHIFT
    while values:
        best = min(values)
        if best == _NOT_A_TOKEN:
            break
        i = values.index(best)
        merged = best & _ID_MASK
        ids[i] = merged
        del ids[i + 1]
        del values[i]
        if i < len(values):
            values[i] = get(merged << shift | ids[i + 1], _NOT_A_TOKEN)
        if i:
            values[i - 1] = get(ids[i - 1] << shift | merged, _NOT_A_TOKEN)
    return ids


def byte_pair_table(byte_ids: list[int], pairs: dict[int, int]) -> list[int]:
    """``table[a << 8 | b]``: the pair value of bytes ``a`` and ``b`` (every piece's first round of pairs)."""
    table = [_NOT_A_TOKEN] * 65536
    for a in range(256):
        for b in range(256):
            table[a << 8 | b] = pairs.get(byte_ids[a] << PAIR_SHIFT | byte_ids[b], _NOT_A_TOKEN)
    return table


def merge_pairs_bytes(data: bytes, byte_ids: list[int], byte_pairs: list[int], pairs: dict[int, int]) -> list[int]:
    """:func:`merge_pairs_short` straight from a piece's bytes: the first round of pair values comes
    from :func:`byte_pair_table` instead of the dictionary (the hot path of cold-cache encoding)."""
    return _merge_rescan([byte_ids[b] for b in data], [byte_pairs[a << 8 | b] for a, b in zip(data, data[1:])], pairs)


def merge_pairs_long(ids: list[int], pairs: dict[int, int]) -> list[int]:
    """Merge-list BPE with a heap over a linked list: O(n log n). Same result as :func:`merge_pairs_short`.

    A heap entry ``(value, s)`` proposes merging the token at position ``s`` with its right
    neighbour; ``value`` identifies the pair (priority and result), so an entry is stale exactly
    when the pair now at ``s`` has another value.
    """
    n = len(ids)
    get = pairs.get
    shift = PAIR_SHIFT
    tok = list(ids)
    nxt = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    alive = [True] * n
    heap = []
    for s in range(n - 1):
        v = get(tok[s] << shift | tok[s + 1])
        if v is not None:
            heap.append((v, s))
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        v, s = pop(heap)
        if not alive[s]:
            continue
        m = nxt[s]
        if m >= n or get(tok[s] << shift | tok[m]) != v:
            continue
        merged = v & _ID_MASK
        tok[s] = merged
        alive[m] = False
        after = nxt[m]
        nxt[s] = after
        if after < n:
            prev[after] = s
            r = get(merged << shift | tok[after])
            if r is not None:
                push(heap, (r, s))
        p = prev[s]
        if p >= 0:
            r = get(tok[p] << shift | merged)
            if r is not None:
                push(heap, (r, p))
    out = []
    s = 0
    while s < n:
        out.append(tok[s])
        s = nxt[s]
    return out


def merge_pair_piece(ids: list[int], pairs: dict[int, int]) -> list[int]:
    """Merge-list BPE of one pre-token's byte-token ids, choosing the faster algorithm for its length."""
    if len(ids) > LONG_PIECE:
        return merge_pairs_long(ids, pairs)
    return merge_pairs_short(ids, pairs)
