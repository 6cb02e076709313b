"""Token ids to streamed text: incremental UTF-8 decoding and stop strings that never leak.

A token can end in the middle of a multi-byte character (decoded incrementally by
:class:`~gptlab.tokenizer.stream.StreamDecoder`), and a stop string can span several tokens.
:class:`TextStream` therefore releases text only when it is final: complete characters that cannot
be the beginning of a stop string. What is held back is released when generation ends for another
reason (the text was real after all).
"""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.tokenizer import Tokenizer
from gptlab.tokenizer.stream import StreamDecoder


class TextStream:
    """Feed generated token ids one at a time; get back the text that is safe to show so far."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self._decoder = StreamDecoder(tokenizer)
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of self.text already released
        self.stopped = False

    def feed(self, token: int) -> str:
        """Add one token; return newly released text. After a stop string, :attr:`stopped` is True."""
        if self.stopped:
            return ""
        self.text += self._decoder.feed(token)
        return self._release()

    def finish(self) -> str:
        """Generation ended (length, EOS, cancel): release whatever was held back."""
        if self.stopped:
            return ""
        self.text += self._decoder.finish()
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out

    def _release(self) -> str:
        # A stop string can only start at or after self.sent: anything earlier was released because
        # no stop string could begin there.
        hit = -1
        for s in self.stop:
            at = self.text.find(s, self.sent)
            if at >= 0 and (hit < 0 or at < hit):
                hit = at
        if hit >= 0:
            out = self.text[self.sent : hit]
            self.text = self.text[:hit]
            self.sent = hit
            self.stopped = True
            return out
        safe = len(self.text) - self._held_back()
        out = self.text[self.sent : safe]
        self.sent = max(self.sent, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        best = 0
        tail_from = self.sent
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text) - tail_from), best, -1):
                if s.startswith(self.text[len(self.text) - k :]):
                    best = k
                    break
        return best
