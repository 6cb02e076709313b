"""Hugging Face's text pipeline before BPE: normalizers and pre-tokenizers, as ``tokenizer.json`` describes them.

A byte-level BPE ``tokenizer.json`` says how text is cut into the pieces BPE merges within:

* a **normalizer** (Qwen: Unicode NFC) applied to each stretch of text between added tokens;
* a **pre-tokenizer**, often a ``Sequence`` of steps, each of which cuts every current piece further:
  ``Split`` (a regex or a literal string, with a rule for what happens to the matches), ``Digits``
  (numbers apart, one by one or in runs), and ``ByteLevel`` (GPT-2's regex when ``use_regex``; its
  byte-to-character mapping is implicit here, since gptlab's BPE works on UTF-8 bytes directly).

:func:`pipeline_from_json` turns those JSON objects into a :class:`PretokenizerSequence` with the same
``split(text) -> pieces`` interface as :class:`gptlab.tokenizer.pretokenize.Pretokenizer`, and
:func:`normalizer_from_json` into a ``str -> str`` function. Anything else (SentencePiece's
``Metaspace``, BERT's normalizers, ...) is refused with one line: those are not byte-level BPE.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

import regex

from gptlab.errors import GptlabError
from gptlab.tokenizer.bpe_pattern import GPT2_PATTERN, tiktoken_compatible
from gptlab.tokenizer.pretokenize import ASCII_FORMS, Pretokenizer
from gptlab.tokenizer.unicode16 import RUST_NUMERIC

# GPT-2's pattern as `tokenizers`' ByteLevel pre-tokenizer writes it (it splits exactly like ours).
HF_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
BEHAVIORS = ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous")
# tokenizer.json spells them in CamelCase.
_BEHAVIOR_NAMES = {"Removed": "removed", "Isolated": "isolated", "MergedWithPrevious": "merged_with_previous",
                   "MergedWithNext": "merged_with_next", "Contiguous": "contiguous"}


class Split:
    """Cut each piece at the matches of ``pattern``; ``behavior`` says where the matches go.

    ``isolated``: matches and the text between them are pieces of their own; ``removed``: matches
    are dropped; ``merged_with_previous``/``merged_with_next``: a match joins the text piece
    before/after it; ``contiguous``: adjacent segments of the same kind (matches, or text between
    them) join. ``invert`` swaps the roles of the matches and the text between them. Empty matches
    are ignored. Each rule is tested against ``tokenizers``' own Split.
    """

    def __init__(self, pattern: str, behavior: str = "isolated", invert: bool = False, literal: bool = False,
                 unicode16: bool = True):
        behavior = behavior.lower()
        if behavior not in BEHAVIORS:
            raise GptlabError(f"Split pre-tokenizer behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
        self.behavior, self.invert = behavior, invert
        # `tokenizers` runs Split regexes on Oniguruma, whose tables are Unicode 16's (see bpe_pattern).
        source = regex.escape(pattern) if literal else tiktoken_compatible(pattern) if unicode16 else pattern
        try:
            self.regex = regex.compile(source)
        except regex.error as exc:
            raise GptlabError(f"Split pre-tokenizer pattern {pattern!r} does not compile: {exc}") from None
        # The models' own patterns cover every character and have an ASCII fast path (pretokenize.py).
        known = not literal and unicode16 and behavior == "isolated" and not invert and pattern in ASCII_FORMS
        self._known = Pretokenizer(pattern).split if known else None

    def _marked(self, text: str) -> list[tuple[str, bool]]:
        """``text`` as (segment, is_match) pairs covering it, in order."""
        out: list[tuple[str, bool]] = []
        pos = 0
        for m in self.regex.finditer(text):
            a, b = m.span()
            if a == b:
                continue
            if a > pos:
                out.append((text[pos:a], self.invert))
            out.append((text[a:b], not self.invert))
            pos = b
        if pos < len(text):
            out.append((text[pos:], self.invert))
        return out

    def __call__(self, piece: str) -> list[str]:
        """The pieces ``piece`` splits into."""
        if self._known is not None:
            return self._known(piece)
        if self.behavior == "isolated" and not self.invert:
            found = self.regex.findall(piece)
            if sum(map(len, found)) == len(piece):  # the usual case: the pattern covers every character
                return found
        marked = self._marked(piece)
        behavior = self.behavior
        if behavior == "isolated":
            return [s for s, _ in marked]
        if behavior == "removed":
            return [s for s, is_match in marked if not is_match]
        out: list[str] = []
        if behavior == "merged_with_previous":
            prev_is_content = False
            for s, is_match in marked:
                if is_match and out and prev_is_content:
                    out[-1] += s
                else:
                    out.append(s)
                prev_is_content = not is_match
            return out
        if behavior == "merged_with_next":
            carry = ""
            for s, is_match in marked:
                if is_match:
                    if carry:
                        out.append(carry)
                    carry = s
                else:
                    out.append(carry + s)
                    carry = ""
            if carry:
                out.append(carry)
            return out
        previous = False
        for s, is_match in marked:  # contiguous: runs of the same kind (matches, or text) join, as in `tokenizers`
            if is_match == previous and out:
                out[-1] += s
            else:
                out.append(s)
            previous = is_match
        return out


_MEMO_PIECE = 256  # longer pieces (the text itself, long runs) are rarely seen twice
_MEMO_LIMIT = 1 << 18


class PretokenizerSequence:
    """Steps applied in order; each maps one piece to several. ``split(text)`` gives the final pieces."""

    def __init__(self, steps: list[Callable[[str], list[str]]]):
        self.steps = steps
        # After the first step the pieces are words and the like, which repeat: remembering what a
        # step made of a piece makes DeepSeek's six-step pipeline ~3x faster on real text.
        self._memo: list[dict[str, list[str]]] = [{} for _ in steps]

    def split(self, text: str) -> list[str]:
        """The pre-tokens of ``text``, in order (their concatenation is ``text``, plus any prefix spaces)."""
        pieces = [text]
        for step, memo in zip(self.steps, self._memo):
            out: list[str] = []
            for p in pieces:
                done = memo.get(p)
                if done is None:
                    done = step(p)
                    if len(p) <= _MEMO_PIECE and len(memo) < _MEMO_LIMIT:
                        memo[p] = done
                out += done
            pieces = out
        return pieces


class _PrefixSpace:
    """ByteLevel's ``add_prefix_space``: a space before every piece that does not start with one."""

    def __call__(self, piece: str) -> list[str]:
        return [piece if piece.startswith(" ") else " " + piece]


def _digits(individual: bool) -> Split:
    # `tokenizers` tests Rust's `char::is_numeric`, i.e. \p{N} by Rust's own tables, which are neither
    # Oniguruma's nor `regex`'s (scripts/unicode16_tables.py measures the difference).
    remove, add = RUST_NUMERIC
    digit = rf"[[\p{{N}}--[{remove}]][{add}]]" if add else rf"[\p{{N}}--[{remove}]]"
    return Split("(?V1)" + (digit if individual else digit + "+"), "isolated", unicode16=False)


def _step(obj: dict[str, Any], where: str) -> list[Callable[[str], list[str]]]:
    kind = obj.get("type")
    if kind == "Split":
        pat = obj.get("pattern") or {}
        if "Regex" in pat:
            source, literal = pat["Regex"], False
        elif "String" in pat:
            source, literal = pat["String"], True
        else:
            raise GptlabError(f"{where}: Split pre-tokenizer without a pattern")
        behavior = _BEHAVIOR_NAMES.get(str(obj.get("behavior", "Isolated")), str(obj.get("behavior")))
        return [Split(source, behavior, bool(obj.get("invert", False)), literal)]
    if kind == "Digits":
        return [_digits(bool(obj.get("individual_digits", False)))]
    if kind == "ByteLevel":
        steps: list[Callable[[str], list[str]]] = []
        if obj.get("add_prefix_space", False):
            steps.append(_PrefixSpace())
        if obj.get("use_regex", True):
            steps.append(Pretokenizer(GPT2_PATTERN).split)
        return steps
    if kind == "Sequence":
        out: list[Callable[[str], list[str]]] = []
        for sub in obj.get("pretokenizers", []):
            out += _step(sub, where)
        return out
    raise GptlabError(
        f"{where}: pre-tokenizer {kind!r} is not supported (gptlab reads byte-level BPE tokenizers: "
        "Split, Digits, ByteLevel and Sequence of them)"
    )


def pipeline_from_json(obj: dict[str, Any] | None, where: str) -> Pretokenizer | PretokenizerSequence:
    """The pre-tokenizer a ``tokenizer.json`` ``pre_tokenizer`` object describes; ``where`` names the file."""
    if obj is None:
        return PretokenizerSequence([])
    if obj.get("type") == "ByteLevel" and obj.get("use_regex", True) and not obj.get("add_prefix_space", False):
        return Pretokenizer(GPT2_PATTERN)  # GPT-2's own: the fast ASCII path applies
    return PretokenizerSequence(_step(obj, where))


_UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}


def normalizer_from_json(obj: dict[str, Any] | None, where: str) -> Callable[[str], str] | None:
    """The ``str -> str`` function of a ``tokenizer.json`` ``normalizer`` (None when there is none)."""
    if obj is None:
        return None
    kind = obj.get("type")
    if kind in _UNICODE_FORMS:
        return lambda text, form=kind: unicodedata.normalize(form, text)
    if kind == "Lowercase":
        return str.lower
    if kind == "Sequence":
        funcs = [f for f in (normalizer_from_json(n, where) for n in obj.get("normalizers", [])) if f]

        def apply(text: str) -> str:
            for f in funcs:
                text = f(text)
            return text

        return apply
    raise GptlabError(
        f"{where}: normalizer {kind!r} is not supported (byte-level BPE tokenizers use none, NFC/NFD/NFKC/NFKD "
        "or Lowercase; Replace/Prepend belong to SentencePiece-style models, which gptlab does not read)"
    )
