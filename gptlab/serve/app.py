"""The ASGI app: OpenAI-compatible endpoints, server-sent events, ``/health``, ``/metrics``, the chat page.

Endpoints: ``GET /`` (chat page), ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions``. With an API key,
``/v1/*`` needs ``Authorization: Bearer KEY``. Every error is OpenAI-shaped JSON (``{"error": {...}}``),
404 and 405 included; a handler that fails unexpectedly answers a 500 in the same shape.

Handlers only parse, submit and copy: the :class:`~gptlab.serve.engine.Engine`'s scheduler thread
runs the model for every request, and hands each event to the event loop (:class:`_EventSink`).

Before any route, :class:`_Guard` applies the policy a local server needs against web pages it does
not trust: the ``Host`` header must name this server (a DNS-rebinding page cannot reach it), POST
bodies must be ``application/json`` (a cross-site "simple" request cannot send one without a CORS
preflight, which this server refuses unless ``cors_origins`` allows the page), and it writes the access
log line and the request metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptlab.data.chat_format import ChatFormat, PlainChat
from gptlab.serve import access_log, protocol
from gptlab.serve.engine import Engine, Event
from gptlab.serve.metrics import CONTENT_TYPE, ROUTES, Metrics
from gptlab.serve.protocol import ApiError

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far more than any context window of text
MAX_URL_BYTES = 8 * 1024  # longer targets are a 414, as common servers answer
MAX_HEADER_BYTES = 16 * 1024  # all header lines together; more is a 431
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")


@dataclass
class ServeSettings:
    """What the app needs besides the engine.

    ``bind_host`` is the address the server listens on: ``Host`` headers must name it (or, for a
    loopback or wildcard address, ``localhost``/``127.0.0.1``/``::1``; for a wildcard address, any IP
    address), or one of ``allowed_hosts`` (``*`` allows any). ``cors_origins`` are the web origins
    allowed to call the API from a browser (none by default; ``*`` for any).
    """

    model_name: str = "gptlab"
    api_key: str | None = None
    chat_format: ChatFormat = field(default_factory=PlainChat)
    max_body_bytes: int = DEFAULT_MAX_BODY
    body_timeout: float = 30.0
    bind_host: str = "127.0.0.1"
    allowed_hosts: Sequence[str] = ()
    cors_origins: Sequence[str] = ()


class _Context:
    """Per-app state: the engine, settings, metrics, and whether the server is draining."""

    def __init__(self, engine: Engine, settings: ServeSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = Metrics(engine)
        self.created = int(time.time())
        self.draining = False


# ---------------------------------------------------------------------------------------- the guard


def host_allowed(host_header: str, bind_host: str, allowed: Sequence[str]) -> bool:
    """Whether a ``Host`` header names this server (see :class:`ServeSettings`); the port is not checked."""
    if "*" in allowed:
        return True
    name = host_header.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    name = name.rstrip(".")
    bind = bind_host.strip("[]").lower()
    if name == bind or name in (a.lower().rstrip(".") for a in allowed):
        return True
    try:
        bind_is_loopback = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        bind_is_loopback = bind == "localhost"
    if (bind_is_loopback or bind in _WILDCARDS) and name in _LOOPBACK_NAMES:
        return True
    if bind in _WILDCARDS:  # reached by an address of this machine: any IP literal is one
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


def _route_of(path: str) -> str:
    """The metrics label of a path: one of :data:`ROUTES`, or ``other``."""
    if path == "/index.html":
        return "/"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return path if path in ROUTES else "other"


_POST_ROUTES = ("/v1/completions", "/v1/chat/completions")
_GET_ROUTES = ("/", "/index.html", "/health", "/metrics", "/v1/models")


def _allow_header(path: str) -> str | None:
    if path in _POST_ROUTES:
        return "POST, OPTIONS"
    if path in _GET_ROUTES or path.startswith("/v1/models/"):
        return "GET, HEAD, OPTIONS"
    return None


class _Guard:
    """Host check, content type, preflights without CORS, access log and metrics around the app."""

    def __init__(self, app: ASGIApp, ctx: _Context) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        info: dict[str, Any] = {}
        scope["gptlab"] = info  # handlers add token counts here
        status = 500
        sent_start = False

        async def send_logged(message: Message) -> None:
            nonlocal status, sent_start
            if message["type"] == "http.response.start":
                status, sent_start = message["status"], True
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_logged)
            else:
                await self.app(scope, receive, send_logged)
        finally:
            elapsed = time.perf_counter() - start
            path, method = scope["path"], scope["method"]
            self.ctx.metrics.observe_request(method, _route_of(path), status, elapsed)
            client = scope.get("client")
            access_log.record(client=f"{client[0]}:{client[1]}" if client else "-", method=method, path=path,
                              status=status if sent_start else 499, latency_s=round(elapsed, 6), **info)

    def _refusal(self, scope: Scope) -> Response | None:
        """The response that refuses this request before any route, or None to let it through."""
        settings = self.ctx.settings
        # Heads that arrive whole are parsed whatever their size; the connection layer catches only those
        # that grow past its buffer while incomplete. So the sizes are checked here too.
        if len(scope.get("raw_path", b"")) + len(scope.get("query_string", b"")) > MAX_URL_BYTES:
            return _error(ApiError(414, f"the request target is longer than {MAX_URL_BYTES} bytes", code="uri_too_long"),
                          headers={"Connection": "close"})  # as the connection layer does for heads too big to parse
        if sum(len(k) + len(v) + 4 for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            return _error(ApiError(431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes",
                                   code="headers_too_large"), headers={"Connection": "close"})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if host is not None and not host_allowed(host, settings.bind_host, settings.allowed_hosts):
            return _error(ApiError(403, f"host {host!r} is not allowed: this server answers to its own address; "
                                        "start it with --allowed-host NAME to accept another name"[:300],
                                   code="host_not_allowed"))
        method, path = scope["method"], scope["path"]
        if method == "OPTIONS" and not settings.cors_origins:
            allow = _allow_header(path)
            if allow is None:
                return _error(ApiError(404, f"no such endpoint: {path}"[:300], code="not_found"))
            # No Access-Control-Allow-* headers: a browser refuses the cross-site request that asked.
            return Response(status_code=204, headers={"Allow": allow})
        if method == "POST" and path in _POST_ROUTES:
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                return _error(ApiError(415, f"the request body must be sent as 'Content-Type: application/json', "
                                            f"got {media or 'none'!r}"[:300], code="unsupported_media_type"))
        return None


# ---------------------------------------------------------------------------------------- helpers


def _error(err: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _ctx(request: Request) -> _Context:
    return request.app.state.gptlab


def _check_key(request: Request) -> None:
    key = _ctx(request).settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                       code="invalid_api_key")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body: at most ``limit`` bytes, all of it within ``timeout`` seconds."""
    length = request.headers.get("content-length")
    if length is None and "chunked" not in request.headers.get("transfer-encoding", "").lower():
        raise ApiError(411, "a Content-Length header is required", code="length_required")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")

    async def read() -> bytes:
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
            parts.append(chunk)
        return b"".join(parts)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    except ClientDisconnect:  # gone mid-body: nobody to answer, and nothing to log but the access line
        raise ApiError(400, "the client closed the connection before the body was complete",
                       code="client_disconnected") from None


class _EventSink:
    """Where the engine's thread puts a request's events, each with the time it arrived, for the event loop.

    Waking the event loop costs a write to its self-pipe and a turn of the loop, while the engine thread
    waits for the GIL; for a whole (non-streaming) answer only the last event matters, so text events
    wake the loop only when ``wake_on_text`` (streams, which send each piece as it comes).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake_on_text: bool) -> None:
        self.loop = loop
        self.wake_on_text = wake_on_text
        self._events: collections.deque[tuple[Event, float]] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, event: Event) -> None:
        """Called by the engine thread."""
        self._events.append((event, time.perf_counter()))
        if self.wake_on_text or event.kind in ("done", "error"):
            try:
                self.loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

    async def get(self) -> tuple[Event, float]:
        """The next event and when the engine sent it."""
        while not self._events:
            self._ready.clear()
            if self._events:  # arrived between the check and the clear: its wake-up may be spent
                break
            await self._ready.wait()
        return self._events.popleft()


class _Timing:
    """First-token and per-token times of one HTTP request's sequences, for the metrics."""

    def __init__(self, metrics: Metrics, arrived: float) -> None:
        self.metrics, self.arrived = metrics, arrived
        self.first: dict[int, float] = {}

    def saw(self, event: Event, now: float) -> None:
        if event.kind == "text" and event.tag not in self.first:
            self.first[event.tag] = now
            self.metrics.time_to_first_token.observe(now - self.arrived)
        elif event.kind == "done":
            self.metrics.prompt_tokens.inc(event.prompt_tokens)
            self.metrics.generation_tokens.inc(event.completion_tokens)
            first = self.first.get(event.tag)
            if first is not None and event.completion_tokens > 1:
                self.metrics.time_per_output_token.observe((now - first) / (event.completion_tokens - 1))


# ---------------------------------------------------------------------------------------- routes


async def page(request: Request) -> Response:
    """The chat page (no key needed to load it; the page asks for one if the API needs it)."""
    from gptlab.serve.page import chat_page

    ctx = _ctx(request)
    return HTMLResponse(chat_page(ctx.settings.model_name, ctx.engine.context_length),
                        headers={"Cache-Control": "no-store"})


async def health(request: Request) -> Response:
    """200 while the engine runs, 503 once it has failed or the server is shutting down."""
    ctx = _ctx(request)
    ok = ctx.engine.alive and ctx.engine.error is None and not ctx.draining
    status = "ok" if ok else ("draining" if ctx.draining else "error")
    return JSONResponse({"status": status, "model": ctx.settings.model_name,
                         "context_length": ctx.engine.context_length, **ctx.engine.stats()},
                        status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    """Prometheus' text format."""
    return Response(_ctx(request).metrics.render(), media_type=CONTENT_TYPE)


def _model_card(ctx: _Context) -> dict[str, Any]:
    return {"id": ctx.settings.model_name, "object": "model", "created": ctx.created, "owned_by": "gptlab",
            "max_model_len": ctx.engine.context_length}


async def models(request: Request) -> Response:
    """``/v1/models``: the one served model."""
    _check_key(request)
    return JSONResponse({"object": "list", "data": [_model_card(_ctx(request))]})


async def model(request: Request) -> Response:
    """``/v1/models/{id}``: the served model, or 404 ``model_not_found``."""
    _check_key(request)
    ctx = _ctx(request)
    name = request.path_params["model_id"]
    if name != ctx.settings.model_name:
        raise ApiError(404, f"The model '{name}' does not exist"[:300], param="model", code="model_not_found")
    return JSONResponse(_model_card(ctx))


async def completions(request: Request) -> Response:
    """``POST /v1/completions``."""
    return await _generate(request, chat=False)


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    return await _generate(request, chat=True)


async def _generate(request: Request, chat: bool) -> Response:
    ctx = _ctx(request)
    arrived = time.perf_counter()
    _check_key(request)
    settings, engine = ctx.settings, ctx.engine
    body = protocol.parse_json(await _read_body(request, settings.max_body_bytes, settings.body_timeout))
    req = protocol.parse_request(body, chat, engine.tokenizer, settings.chat_format, engine.context_length,
                                 models=(settings.model_name,))
    if ctx.draining or not engine.alive:
        raise ApiError(503, "the server is shutting down" if ctx.draining else "the generation engine is not running",
                       type="server_error", code="engine_down")
    sink = _EventSink(asyncio.get_running_loop(), wake_on_text=req.stream)
    handles = []
    try:
        for i, prompt in enumerate(req.prompts):
            handles.append(engine.submit(prompt, req.params, events=sink, tag=i, group=sink))
    except RuntimeError as exc:  # the engine stopped between the check above and the submit
        for h in handles:
            h.cancel()
        raise ApiError(503, str(exc), type="server_error", code="engine_down") from None
    answer = _Answer(request, ctx, req, handles, sink, _Timing(ctx.metrics, arrived))
    if req.stream:
        return StreamingResponse(answer.stream(), media_type="text/event-stream; charset=utf-8",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await answer.whole()


class _Answer:
    """One request's events turned into a whole response or a stream; cancels what is left if it stops early."""

    def __init__(self, request: Request, ctx: _Context, req: protocol.ParsedRequest, handles: list,
                 sink: _EventSink, timing: _Timing) -> None:
        self.request, self.ctx, self.req, self.handles, self.sink, self.timing = request, ctx, req, handles, sink, timing
        self.rid, self.created = protocol.new_id(req.chat), protocol.now()
        self.tokenizer = ctx.engine.tokenizer
        self.prompt_tokens = self.completion_tokens = 0
        n = len(handles)
        # Completions with echo start each text with its prompt; logprob offsets count from there.
        self.texts: list[list[str]] = [[self.tokenizer.decode(p)] if req.echo else [] for p in req.prompts]
        self.offsets = [len(t[0]) if t else 0 for t in self.texts]
        self.scores: list[list] = [[] for _ in range(n)]
        self.reasons: list[str] = ["stop"] * n

    async def _events(self) -> AsyncIterator[Event]:
        """The events of every sequence until each has ended; cancels the rest if the consumer stops early."""
        remaining = len(self.handles)
        try:
            while remaining:
                event, at = await self.sink.get()
                self.timing.saw(event, at)
                if event.kind in ("done", "error"):
                    remaining -= 1
                if event.kind == "done":
                    self.prompt_tokens += event.prompt_tokens
                    self.completion_tokens += event.completion_tokens
                yield event
        finally:
            for h in self.handles:
                if h.finish_reason is None:
                    h.cancel()
            info = self.request.scope.get("gptlab")
            if info is not None:
                info.update(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)

    def _logprobs(self, tag: int, scores: list | None) -> dict | None:
        """A stream chunk's logprobs object; completions' text offsets continue from the previous chunk."""
        if scores is None or self.req.params.logprobs is None:
            return None
        if self.req.chat:
            return protocol.chat_logprobs(self.tokenizer, scores)
        out = protocol.completion_logprobs(self.tokenizer, scores, self.offsets[tag])
        if out["tokens"]:
            last = scores[-1]
            self.offsets[tag] = out["text_offset"][-1] + len(self.tokenizer.decode_bytes([last.id]).decode(
                "utf-8", errors="replace"))
        return out

    async def whole(self) -> Response:
        """Wait for every sequence (cancelling them if the client leaves) and answer in one JSON body."""
        collect = asyncio.ensure_future(self._collect())
        gone = asyncio.ensure_future(_disconnected(self.request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not collect.done():  # the client left: stop its sequences; nobody reads the answer
            collect.cancel()
            try:
                await collect
            except asyncio.CancelledError:
                pass
            return Response(status_code=499)
        return collect.result()

    async def _collect(self) -> Response:
        req, name = self.req, self.ctx.settings.model_name
        async with contextlib.aclosing(self._events()) as events:
            async for event in events:
                if event.kind in ("prompt", "text"):
                    self.texts[event.tag].append(event.text)
                    if event.logprobs is not None:
                        self.scores[event.tag].extend(event.logprobs)
                elif event.kind == "done":
                    self.reasons[event.tag] = event.finish_reason or "stop"
                else:
                    return _error(_engine_error(event.text))
        use = protocol.usage(self.prompt_tokens, self.completion_tokens)
        outputs = ["".join(t) for t in self.texts]
        if req.params.logprobs is None:
            logprobs: list[dict | None] = [None] * len(outputs)
        elif req.chat:
            logprobs = [protocol.chat_logprobs(self.tokenizer, s) for s in self.scores]
        else:  # offsets from 0: with echo, the scores and the text both start with the prompt
            logprobs = [protocol.completion_logprobs(self.tokenizer, s) for s in self.scores]
        if req.chat:
            body = protocol.chat_body(self.rid, name, self.created, outputs[0], self.reasons[0], use, logprobs[0])
        else:
            body = protocol.completion_body(self.rid, name, self.created,
                                            list(zip(outputs, self.reasons, logprobs)), use)
        return JSONResponse(body)

    async def stream(self) -> AsyncIterator[bytes]:
        """Server-sent events: chunks as tokens arrive, an error event if generation fails, then ``[DONE]``."""
        req, name, rid, created = self.req, self.ctx.settings.model_name, self.rid, self.created

        def sse(obj: Any) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        if req.chat:
            yield sse(protocol.chat_chunk(rid, name, created, {"role": "assistant", "content": ""}, None))
        elif req.echo and req.params.prompt_logprobs is False:
            for tag, text in enumerate(self.texts):
                yield sse(protocol.completion_chunk(rid, name, created, tag, text[0], None))
        async with contextlib.aclosing(self._events()) as events:
            async for event in events:
                if event.kind in ("prompt", "text"):
                    text = event.text if event.kind == "text" else self.texts[event.tag][0]
                    if event.kind == "prompt":
                        self.offsets[event.tag] = 0  # the prompt's own scores start the text
                    logprobs = self._logprobs(event.tag, event.logprobs)
                    if req.chat:
                        yield sse(protocol.chat_chunk(rid, name, created, {"content": text}, None, logprobs))
                    else:
                        yield sse(protocol.completion_chunk(rid, name, created, event.tag, text, None, logprobs))
                elif event.kind == "done":
                    if req.chat:
                        yield sse(protocol.chat_chunk(rid, name, created, {}, event.finish_reason))
                    else:
                        yield sse(protocol.completion_chunk(rid, name, created, event.tag, "", event.finish_reason))
                else:
                    yield sse(_engine_error(event.text).body())
                    break
        if req.include_usage:
            yield sse(protocol.usage_chunk(rid, name, created, req.chat,
                                           protocol.usage(self.prompt_tokens, self.completion_tokens)))
        yield b"data: [DONE]\n\n"


def _engine_error(message: str) -> ApiError:
    """An engine's ``error`` event as the API reports it (503 when the server is shutting down)."""
    if "shutting down" in message:
        return ApiError(503, message, type="server_error", code="server_shutting_down")
    return ApiError(500, message, type="server_error", code="engine_error")


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (after the body was read, ``receive`` only reports that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ---------------------------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 405:
        allow = _allow_header(path) or ""
        return _error(ApiError(405, f"{path} does not take {method}; it takes {allow.split(',')[0]}"[:300],
                               code="method_not_allowed"), headers={"Allow": allow})
    if exc.status_code == 404:
        return _error(ApiError(404, f"no such endpoint: {method} {path}"[:300], code="not_found"))
    return _error(ApiError(exc.status_code, str(exc.detail)[:300]))


async def _server_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback (a bug worth seeing); the client still gets an answer in the API's shape.
    return _error(ApiError(500, f"internal server error: {type(exc).__name__}", type="server_error",
                           code="internal_error"))


def create_app(engine: Engine, settings: ServeSettings | None = None) -> Starlette:
    """The ASGI app serving ``engine`` (which the caller starts and stops)."""
    settings = settings or ServeSettings()
    ctx = _Context(engine, settings)
    get = ["GET"]
    routes = [
        Route("/", page, methods=get),
        Route("/index.html", page, methods=get),
        Route("/health", health, methods=get),
        Route("/metrics", metrics, methods=get),
        Route("/v1/models", models, methods=get),
        Route("/v1/models/{model_id:path}", model, methods=get),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    middleware = [Middleware(_Guard, ctx=ctx)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"], max_age=600))
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.gptlab = ctx
    return app


def app_context(app: Starlette) -> _Context:
    """The engine, settings and metrics of an app made by :func:`create_app`."""
    return app.state.gptlab
