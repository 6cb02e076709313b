"""The OpenAI wire format: request validation and response bodies for completions and chat completions.

Everything here is pure (no sockets, no model), so the HTTP layer stays thin. A bad request raises
:class:`ApiError`, which carries the HTTP status and the OpenAI-style error body
``{"error": {"message", "type", "param", "code"}}``.

Accepted fields follow OpenAI's API, ``logprobs`` (and ``echo``, to score a prompt with ``max_tokens``
0, as evaluation harnesses do) included. Fields that OpenAI has but that change results in ways this
server does not implement (``n`` > 1, penalties, ``logit_bias``, tools, ...) are refused with a 400
naming the field rather than silently ignored; fields OpenAI does not have are refused as
"unrecognized", as OpenAI does. One extension: ``ignore_eos`` (as in vLLM), used by benchmarks to
generate exactly ``max_tokens`` tokens.

A ``model`` other than the served one is a 404 ``model_not_found``, as OpenAI answers; a request without
one gets the served model (as vLLM and llama.cpp's server do), so simple clients need not know its name.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from gptlab.data.chat_format import encode_chat, stop_ids_of
from gptlab.errors import GptlabError
from gptlab.serve.engine import ContextLengthExceeded, SamplingParams, TokenLogprob, check_fits

MAX_LOGPROBS = 20  # alternatives per position (OpenAI allows 5 on completions and 20 on chat)
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what a torch.Generator accepts

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


def parse_json(data: bytes) -> Any:
    """The request body as JSON, or a 400 ``invalid_json``.

    Stricter than :func:`json.loads` where a server must be: ``NaN``/``Infinity`` are refused (they
    are not JSON, and a NaN temperature would sample token 0 forever), and bodies that are too deep
    or hold integers too long to convert are refused too, instead of raising out of the handler.
    """

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON (nested too deeply)", code="invalid_json") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int() of a 5,000-digit number
        raise ApiError(400, f"the request body is not valid JSON ({exc})"[:300], code="invalid_json") from None


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
    echo: bool = False  # completions: the answer starts with the prompt's text


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
    if isinstance(value, float) and not math.isfinite(value):  # 1e999 parses as infinity
        raise ApiError(400, f"'{name}' must be a finite number, got {value}", param=name, code="invalid_value")
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


def parse_request(body: Any, chat: bool, tokenizer, chat_format, context_length: int,  # noqa: ANN001
                  models: Collection[str] | None = None) -> ParsedRequest:
    """Validate a ``/v1/completions`` (``chat=False``) or ``/v1/chat/completions`` body.

    ``tokenizer`` encodes prompts; ``chat_format`` (see :mod:`gptlab.data.chat_format`) turns messages
    into a prompt and contributes its stop strings. Raises :class:`ApiError` on anything invalid,
    including a prompt plus ``max_tokens`` longer than ``context_length``, and a ``model`` not in
    ``models`` (when given).
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    allowed = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}"[:300], param=name,
                           code="unrecognized_argument")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if model is not None and models is not None and model not in models:
        raise ApiError(404, f"The model '{model}' does not exist"[:300], param="model", code="model_not_found")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _type_error("user", "a string", body["user"])

    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    seed = _integer(body, "seed")
    if seed is not None and not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        raise ApiError(400, f"'seed' must be an integer in [-2**63, 2**64), got {seed}"[:300], param="seed",
                       code="invalid_value")
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
    _neutral(body, "suffix", lambda v: v == "")
    logprobs, echo = _logprobs(body, chat)
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
    # Scoring a prompt (echo with logprobs) may ask for no new tokens at all.
    least = 0 if echo and logprobs is not None else 1
    if max_tokens < least:
        raise ApiError(400, f"'max_tokens' must be >= {least}, got {max_tokens}"[:300], param="max_tokens",
                       code="invalid_value")
    try:
        check_fits(longest, max_tokens, context_length)
    except ContextLengthExceeded as exc:
        raise ApiError(400, str(exc), param="messages" if chat else "prompt", code="context_length_exceeded") from None
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                            stop=tuple(stops), ignore_eos=ignore_eos, stop_ids=stop_ids, logprobs=logprobs,
                            prompt_logprobs=echo and logprobs is not None)
    return ParsedRequest(prompts, params, stream, include_usage, chat, echo)


def _logprobs(body: dict, chat: bool) -> tuple[int | None, bool]:
    """``(alternatives per position or None, echo)`` from ``logprobs``/``top_logprobs``/``echo``.

    Completions: ``logprobs`` is how many alternatives (0-20; null for none). Chat: ``logprobs`` is a
    boolean and ``top_logprobs`` (0-20) the alternatives, which need ``logprobs: true``.
    """
    if chat:
        wanted = _boolean(body, "logprobs")
        top = _integer(body, "top_logprobs")
        if top is not None and not 0 <= top <= MAX_LOGPROBS:
            raise ApiError(400, f"'top_logprobs' must be in [0, {MAX_LOGPROBS}], got {top}"[:300],
                           param="top_logprobs", code="invalid_value")
        if top and not wanted:
            raise ApiError(400, "'top_logprobs' needs 'logprobs' set to true", param="top_logprobs",
                           code="invalid_value")
        return (top or 0) if wanted else None, False
    k = _integer(body, "logprobs")
    if k is not None and not 0 <= k <= MAX_LOGPROBS:
        raise ApiError(400, f"'logprobs' must be in [0, {MAX_LOGPROBS}], got {k}"[:300], param="logprobs",
                       code="invalid_value")
    return k, _boolean(body, "echo")


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
            ids = encode_text(tokenizer, item, "prompt")
        elif ids_ok(item):
            ids = list(item)
        else:
            raise ApiError(400, f"'prompt': token ids must be integers in [0, {vocab})", param="prompt",
                           code="invalid_value")
        # An empty prompt continues from <|endoftext|>, the start-of-document token GPT-2 was trained with.
        prompts.append(ids or [bos])
    return prompts


def encode_text(tokenizer, text: str, param: str) -> list[int]:  # noqa: ANN001
    """``text`` as token ids, or a 400 naming ``param`` when the tokenizer cannot encode it.

    A character model refuses characters outside its alphabet, and no tokenizer can encode a lone
    surrogate (``"\\ud800"`` is valid JSON but not text); both are the client's error, not the server's.
    """
    try:
        return tokenizer.encode(text, disallowed_special=())
    except UnicodeEncodeError:
        raise ApiError(400, f"'{param}' holds a lone surrogate, which is not text that can be encoded",
                       param=param, code="invalid_value") from None
    except (GptlabError, ValueError, KeyError) as exc:
        raise ApiError(400, f"'{param}' cannot be encoded by this model's tokenizer: {exc}"[:300], param=param,
                       code="invalid_value") from None


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
    except UnicodeEncodeError:
        raise ApiError(400, "'messages' hold a lone surrogate, which is not text that can be encoded",
                       param="messages", code="invalid_value") from None
    except (ValueError, KeyError) as exc:  # GptlabError from the style, template or tokenizer: it says what
        raise ApiError(400, f"'messages' cannot be encoded: {exc}"[:300], param="messages",
                       code="invalid_value") from None


# ---------------------------------------------------------------------------------------- responses


def new_id(chat: bool) -> str:
    """A response id in OpenAI's style (``cmpl-...`` / ``chatcmpl-...``)."""
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, created: int, choices: list[tuple[str, str, dict | None]],
                    use: dict) -> dict:
    """A whole ``text_completion`` (``choices``: ``(text, finish_reason, logprobs)`` per prompt)."""
    return {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}
                    for i, (text, reason, logprobs) in enumerate(choices)],
        "usage": use,
    }


def chat_body(rid: str, model: str, created: int, text: str, reason: str, use: dict,
              logprobs: dict | None = None) -> dict:
    """A whole ``chat.completion``."""
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                     "finish_reason": reason}],
        "usage": use,
    }


def completion_chunk(rid: str, model: str, created: int, index: int, text: str, reason: str | None,
                     logprobs: dict | None = None) -> dict:
    """One streamed ``text_completion`` chunk."""
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}]}


def chat_chunk(rid: str, model: str, created: int, delta: dict, reason: str | None,
               logprobs: dict | None = None) -> dict:
    """One streamed ``chat.completion.chunk``."""
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}


def token_text(tokenizer, token_id: int) -> tuple[str, bytes]:  # noqa: ANN001
    """A token as OpenAI shows it, and its bytes: ``bytes:\\xe2\\x80`` when it is not whole UTF-8."""
    raw = tokenizer.decode_bytes([token_id])
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def completion_logprobs(tokenizer, scores: Sequence[TokenLogprob], offset: int = 0) -> dict:  # noqa: ANN001
    """The ``logprobs`` of a completion choice: ``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``.

    ``offset`` is where the first token's text starts in the choice's text (a stream's earlier chunks,
    or the echoed prompt). A prompt's first token has no logprob and no alternatives (``null``).
    """
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for score in scores:
        text, raw = token_text(tokenizer, score.id)
        out["tokens"].append(text)
        out["token_logprobs"].append(score.logprob)
        out["top_logprobs"].append(None if score.logprob is None else
                                   {token_text(tokenizer, t)[0]: lp for t, lp in score.top})
        out["text_offset"].append(offset)
        offset += len(raw.decode("utf-8", errors="replace"))
    return out


def chat_logprobs(tokenizer, scores: Sequence[TokenLogprob]) -> dict:  # noqa: ANN001
    """The ``logprobs`` of a chat choice: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""

    def entry(token_id: int, logprob: float) -> dict:
        text, raw = token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**entry(s.id, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top]}
                        for s in scores]}


def usage_chunk(rid: str, model: str, created: int, chat: bool, use: dict) -> dict:
    """The last chunk when ``stream_options.include_usage`` is set: no choices, only usage."""
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [], "usage": use}


def now() -> int:
    """Seconds since the epoch, as ``created`` fields use."""
    return int(time.time())
