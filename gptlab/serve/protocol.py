"""The OpenAI wire format: request validation and response bodies for completions and chat completions.

Everything here is pure (no sockets, no model), so the HTTP layer stays thin. A bad request raises
:class:`ApiError`, which carries the HTTP status and the OpenAI-style error body
``{"error": {"message", "type", "param", "code"}}``.

Accepted fields follow OpenAI's API. Fields that OpenAI has but that change results in ways this
server does not implement (``n`` > 1, ``logprobs``, penalties, ``logit_bias``, tools, ...) are refused
with a 400 naming the field rather than silently ignored; fields OpenAI does not have are refused as
"unrecognized", as OpenAI does. One extension: ``ignore_eos`` (as in vLLM), used by benchmarks to
generate exactly ``max_tokens`` tokens.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from gptlab.data.chat_format import encode_chat, stop_ids_of
from gptlab.serve.engine import ContextLengthExceeded, SamplingParams, check_fits


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:  # noqa: A002 - OpenAI's field name
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {...}}`` as OpenAI returns it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass
class ParsedRequest:
    """A validated request: prompts as token ids (one per choice), sampling settings, streaming options."""

    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    chat: bool


# Fields that are accepted and have no effect on the result (or only their neutral value is accepted).
_COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "stream", "stream_options", "user",
           "n", "presence_penalty", "frequency_penalty", "logit_bias", "ignore_eos"}
_COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs", "best_of", "suffix"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools",
                          "tool_choice", "response_format", "parallel_tool_calls", "metadata", "store"}


def _type_error(name: str, expected: str, value: Any) -> ApiError:
    got = "null" if value is None else type(value).__name__
    return ApiError(400, f"'{name}' must be {expected}, got {got}: {value!r}"[:300], param=name, code="invalid_type")


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(name, "a number", value)
    if value < lo or value > hi or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise ApiError(400, f"'{name}' must be in {left}{lo}, {hi}], got {value}", param=name, code="invalid_value")
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    return value


def _boolean(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


def _neutral(body: dict, name: str, neutral_ok) -> None:  # noqa: ANN001
    """Refuse a field whose value asks for something this server does not do."""
    if name in body and body[name] is not None and not neutral_ok(body[name]):
        raise ApiError(400, f"'{name}' is not supported by this server (got {body[name]!r})"[:300], param=name,
                       code="unsupported_parameter")


def parse_request(body: Any, chat: bool, tokenizer, chat_format, context_length: int) -> ParsedRequest:  # noqa: ANN001
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body.

    ``tokenizer`` encodes prompts; ``chat_format`` (see :mod:`gptlab.data.chat_format`) turns messages
    into a prompt and contributes its stop strings. Raises :class:`ApiError` on anything invalid,
    including a prompt plus ``max_tokens`` longer than ``context_length``.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    allowed = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}"[:300], param=name,
                           code="unrecognized_argument")
    if "model" in body and not isinstance(body["model"], str):
        raise _type_error("model", "a string", body["model"])
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _type_error("user", "a string", body["user"])

    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _integer(body, "seed")
    stream = _boolean(body, "stream")
    ignore_eos = _boolean(body, "ignore_eos")
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise ApiError(400, f"'n' must be 1 on this server, got {n}", param="n", code="unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, 0.0, -2.0, 2.0)
        _neutral(body, name, lambda v: v == 0)
    _neutral(body, "logit_bias", lambda v: v == {})
    _neutral(body, "best_of", lambda v: v == 1)
    _neutral(body, "echo", lambda v: v is False)
    _neutral(body, "suffix", lambda v: v == "")
    _neutral(body, "logprobs", lambda v: v is False)
    _neutral(body, "top_logprobs", lambda v: v == 0)
    _neutral(body, "tools", lambda v: v == [])
    _neutral(body, "tool_choice", lambda v: v == "none")
    _neutral(body, "response_format", lambda v: isinstance(v, dict) and v.get("type") == "text")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object", options)
        include_usage = _boolean(options, "include_usage")

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > 4:
            raise ApiError(400, f"'stop' takes at most 4 sequences, got {len(stop)}", param="stop",
                           code="invalid_value")
        stops = list(stop)
    else:
        raise _type_error("stop", "a string or a list of strings", stop)

    if chat:
        prompts = [_chat_prompt(body.get("messages"), chat_format, tokenizer) or [tokenizer.eot_id or 0]]
        stops += [s for s in chat_format.stop if s not in stops]
        stop_ids = stop_ids_of(chat_format)
        max_tokens = _integer(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens")
    else:
        prompts = _completion_prompts(body.get("prompt"), tokenizer)
        stop_ids = ()
        max_tokens = _integer(body, "max_tokens")
    longest = max(len(p) for p in prompts)
    if max_tokens is None:
        # OpenAI's defaults: 16 tokens for completions; for chat, whatever room the context leaves.
        max_tokens = 16 if not chat else max(1, context_length - longest)
    if max_tokens < 1:
        raise ApiError(400, f"'max_tokens' must be >= 1, got {max_tokens}", param="max_tokens", code="invalid_value")
    try:
        check_fits(longest, max_tokens, context_length)
    except ContextLengthExceeded as exc:
        raise ApiError(400, str(exc), param="messages" if chat else "prompt", code="context_length_exceeded") from None
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            stop=tuple(stops), ignore_eos=ignore_eos, stop_ids=stop_ids)
    return ParsedRequest(prompts, params, stream, include_usage, chat)


def _completion_prompts(prompt: Any, tokenizer) -> list[list[int]]:  # noqa: ANN001
    """``prompt``: a string, a list of strings, a list of token ids, or a list of token-id lists."""
    vocab = tokenizer.n_vocab
    bos = tokenizer.eot_id if tokenizer.eot_id is not None else 0

    def ids_ok(ids: list) -> bool:
        return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids)

    if isinstance(prompt, str):
        texts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        texts = prompt
    else:
        raise _type_error("prompt", "a string, a list of strings, or a list of token ids", prompt)
    if len(texts) > 64:
        raise ApiError(400, f"'prompt' holds {len(texts)} prompts; at most 64 per request", param="prompt",
                       code="invalid_value")
    prompts: list[list[int]] = []
    for item in texts:
        if isinstance(item, str):
            # A model's own special tokens in user text are encoded as plain text, never as control tokens.
            ids = tokenizer.encode(item, disallowed_special=())
        elif ids_ok(item):
            ids = list(item)
        else:
            raise ApiError(400, f"'prompt': token ids must be integers in [0, {vocab})", param="prompt",
                           code="invalid_value")
        # An empty prompt continues from <|endoftext|>, the start-of-document token GPT-2 was trained with.
        prompts.append(ids or [bos])
    return prompts


def _chat_prompt(messages: Any, chat_format, tokenizer) -> list[int]:  # noqa: ANN001
    """Validate ``messages``, format and encode them (:func:`encode_chat`); content may be a string or text parts.

    A message holding a special token's text under a chat template is refused with a 400 (see
    :class:`~gptlab.data.chat_format.TemplateChat`).
    """
    if not isinstance(messages, list) or not messages:
        raise _type_error("messages", "a non-empty list of {role, content} objects", messages)
    clean: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _type_error(f"messages[{i}]", "an object", msg)
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"'messages[{i}].role' must be 'system', 'user' or 'assistant', got {role!r}"[:300],
                           param=f"messages[{i}].role", code="invalid_value")
        if isinstance(content, list):  # [{"type": "text", "text": "..."}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"'messages[{i}].content': only text parts are supported",
                               param=f"messages[{i}].content", code="invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _type_error(f"messages[{i}].content", "a string", content)
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    try:
        return encode_chat(chat_format, tokenizer, clean)
    except ValueError as exc:  # GptlabError from the prompt style or template: the message says what is wrong
        raise ApiError(400, str(exc), param="messages", code="invalid_value") from None


# ---------------------------------------------------------------------------------------- responses


def new_id(chat: bool) -> str:
    """A response id in OpenAI's style (``cmpl-...`` / ``chatcmpl-...``)."""
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, created: int, choices: list[tuple[str, str]], use: dict) -> dict:
    """A whole ``text_completion`` (``choices``: ``(text, finish_reason)`` per prompt)."""
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                    for i, (text, reason) in enumerate(choices)],
        "usage": use,
    }


def chat_body(rid: str, model: str, created: int, text: str, reason: str, use: dict) -> dict:
    """A whole ``chat.completion``."""
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": reason}],
        "usage": use,
    }


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, reason: str | None) -> dict:
    """One streamed ``text_completion`` chunk."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]}


def chat_chunk(rid: str, model: str, created: int, delta: dict, reason: str | None) -> dict:
    """One streamed ``chat.completion.chunk``."""
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}


def usage_chunk(rid: str, model: str, created: int, chat: bool, use: dict) -> dict:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [], "usage": use}


def now() -> int:
    """Seconds since the epoch, as ``created`` fields use."""
    return int(time.time())
