"""Token ids to text as they are generated, one token at a time.

A byte-level token can end in the middle of a multi-byte UTF-8 character (GPT-2 splits many emoji
and CJK characters over two or three tokens), so decoding each token on its own would print
replacement characters. :class:`StreamDecoder` keeps the incomplete bytes until the character is
whole.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from gptlab.tokenizer.base import Tokenizer


class StreamDecoder:
    """Incremental decoding: feed token ids as they come, get back the text of the complete characters.

    Bytes that are not valid UTF-8 become U+FFFD, as :meth:`Tokenizer.decode` does, so the
    concatenated pieces (with :meth:`finish`) equal ``tokenizer.decode`` of all the tokens.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, tokens: int | Iterable[int]) -> str:
        """Add one token (or several); return the text they complete (may be empty)."""
        ids = [tokens] if isinstance(tokens, int) else list(tokens)
        return self._decoder.decode(self.tokenizer.decode_bytes(ids))

    def finish(self) -> str:
        """The end of the stream: a character left incomplete comes out as U+FFFD. The decoder starts afresh."""
        return self._decoder.decode(b"", final=True)
