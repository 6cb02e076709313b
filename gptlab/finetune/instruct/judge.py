"""An LLM judge over any OpenAI-compatible chat endpoint (Ollama, ``gptlab serve``, vLLM, ...).

Each answer is scored with the book's chapter 7 prompt ("... score the model response ... on a scale
from 0 to 100 ... Respond with the integer number only."), at temperature 0. The reply must be an
integer from 0 to 100 and nothing else (surrounding whitespace aside); any other reply is counted as
unscorable, never guessed at. A request the endpoint refuses (HTTP 400/413/422, e.g. a prompt beyond a
small judge's context) is counted as rejected and judging goes on; a reply that is not the chat API's
JSON, another HTTP error, or an endpoint that cannot be reached stops the judging
(:class:`JudgeUnavailable`), keeping what was judged.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from typing import Any

from gptlab.errors import GptlabError
from gptlab.finetune.instruct.data import is_chat_entry, reference_answer, task_text

_INTEGER = re.compile(r"\s*(\d{1,3})\s*")


class JudgeUnavailable(GptlabError):
    """The judge endpoint is down, unreachable, or does not answer in the chat-completions format."""


class JudgeRejected(GptlabError):
    """The endpoint refused this one request (HTTP 400/413/422, e.g. a prompt beyond its context)."""


# Statuses that mean "this request", not "this endpoint": judging goes on with the next answer.
_PER_REQUEST_STATUS = (400, 413, 422)


def book_input_text(entry: dict[str, Any]) -> str:
    """The book's ``format_input(entry)``: the Alpaca instruction (and input) block without the response marker."""
    text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text


def judge_prompt(entry: dict[str, Any], response_field: str = "model_response") -> str:
    """The book's scoring prompt for one entry with a reference ``output`` and a model answer.

    A chat entry (``messages``) gives its conversation before the last assistant message as the input
    and that message as the correct output.
    """
    if is_chat_entry(entry):
        given, correct = task_text(entry), reference_answer(entry)
    else:
        given, correct = book_input_text(entry), entry["output"]
    return (
        f"Given the input `{given}` "
        f"and correct output `{correct}`, "
        f"score the model response `{entry[response_field]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def parse_score(reply: str) -> int | None:
    """The score in ``reply`` if it is exactly one integer from 0 to 100 (whitespace allowed), else None."""
    m = _INTEGER.fullmatch(reply or "")
    if not m:
        return None
    value = int(m.group(1))
    return value if 0 <= value <= 100 else None


def chat_url(url: str) -> str:
    """The chat-completions address for a base URL: ``http://host:port``, ``.../v1`` or the full path."""
    url = url.rstrip("/")
    if not re.match(r"^https?://", url):
        raise GptlabError(f"--judge-url {url!r}: expected an http:// or https:// address")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class ChatJudge:
    """A client for one OpenAI-compatible endpoint and model (urllib only; no extra dependency)."""

    def __init__(self, url: str, model: str, timeout: float = 120.0, api_key: str | None = None,
                 seed: int = 123, max_tokens: int = 16):
        self.url = chat_url(url)
        self.model = model
        self.timeout = timeout
        self.api_key = api_key
        self.seed = seed
        self.max_tokens = max_tokens

    def complete(self, prompt: str) -> str:
        """The assistant's reply to one user message, at temperature 0.

        Raises :class:`JudgeRejected` when the endpoint refuses this request only, and
        :class:`JudgeUnavailable` when it is down or does not speak the chat-completions API.
        """
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "stream": False,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            kind = JudgeRejected if exc.code in _PER_REQUEST_STATUS else JudgeUnavailable
            raise kind(f"judge {self.url} answered HTTP {exc.code} ({detail or exc.reason})") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise JudgeUnavailable(f"judge {self.url} is not reachable ({reason})") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = raw[:120].decode("utf-8", "replace")
            raise JudgeUnavailable(
                f"judge {self.url} did not answer in the chat-completions format (got {snippet!r})"
            ) from None
        if not isinstance(content, str):
            raise JudgeUnavailable(f"judge {self.url}: message content is {type(content).__name__}, not text")
        return content


def histogram(scores: list[int], width: int = 10) -> list[dict[str, int]]:
    """Counts per bin of ``width`` points: 0-9, 10-19, ..., 90-100 (100 joins the last bin)."""
    bins = []
    for low in range(0, 100, width):
        high = low + width - 1 if low + width < 100 else 100
        bins.append({"low": low, "high": high, "count": sum(low <= s <= high for s in scores)})
    return bins
