"""The HTTP server: OpenAI-compatible endpoints, server-sent events, ``/health`` and the chat page.

Built on the standard library's :class:`http.server.ThreadingHTTPServer`: one thread per connection
is plenty here because no handler does real work; they parse JSON, hand prompts to the
:class:`~gptlab.serve.engine.Engine` (one scheduler thread runs the model for everybody) and copy its
events to the socket. That keeps serving free of web-framework dependencies and their version churn,
and HTTP/1.1 keep-alive, chunked streaming and body limits are a few lines each.

Endpoints: ``GET /`` (chat page), ``GET /health``, ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/completions``, ``POST /v1/chat/completions``. With an API key, ``/v1/*`` needs
``Authorization: Bearer KEY``. Errors are OpenAI-shaped JSON with a 4xx status (5xx only when the
engine itself has failed); a handler never takes the server down with it.
"""

from __future__ import annotations

import hmac
import json
import queue
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from gptlab.serve import protocol
from gptlab.data.chat_format import ChatFormat, PlainChat
from gptlab.serve.engine import Engine, Event
from gptlab.serve.protocol import ApiError

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: far more than any context window of text


class ApiServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the engine and settings its handlers need."""

    daemon_threads = True
    allow_reuse_address = True
    # Many clients connect at once in bursts; the default backlog of 5 would make some wait for a SYN retry.
    request_queue_size = 256

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        api_key: str | None = None,
        model_name: str = "gptlab",
        chat_format: ChatFormat | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        log_requests: bool = False,
    ) -> None:
        self.engine = engine
        self.api_key = api_key or None
        self.model_name = model_name
        self.chat_format = chat_format or PlainChat()
        self.max_body_bytes = max_body_bytes
        self.log_requests = log_requests
        self.created = int(time.time())
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> ApiServer:
        """Start the engine and serve in a background thread; returns self (for tests and benchmarks)."""
        self.engine.start()
        self._thread = threading.Thread(target=self.serve_forever, name="gptlab-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, stop the engine, release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(10)
        self.server_close()
        self.engine.stop()


def create_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> ApiServer:
    """An :class:`ApiServer` for ``engine`` bound to ``host:port`` (port 0 picks a free one); not started yet."""
    return ApiServer(engine, host, port, **kwargs)


class _ClientGone(Exception):
    """The client closed the connection; the handler stops and frees its requests."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked transfer for streams
    server_version = "gptlab"
    timeout = 120  # seconds a client may stay silent (reading a request, or not reading a stream)
    server: ApiServer

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.log_requests:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _send_json(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: ApiError, close: bool = False) -> None:
        self._send_json(err.status, err.body(), close=close)

    def _client_gone(self) -> bool:
        """True when the peer has closed its end (readable, and a peek reads nothing)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        header = self.headers.get("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        return hmac.compare_digest(given.encode(), key.encode())

    def _auth_error(self) -> ApiError:
        return ApiError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                        code="invalid_api_key")

    # ------------------------------------------------------------------ GET

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        srv = self.server
        if path in ("/", "/index.html"):
            from gptlab.serve.page import chat_page

            data = chat_page(srv.model_name).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        elif path == "/health":
            ok = srv.engine.alive and srv.engine.error is None
            self._send_json(200 if ok else 503, {"status": "ok" if ok else "error", "model": srv.model_name,
                                                 **srv.engine.stats()})
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            if not self._authorized():
                return self._send_error(self._auth_error())
            card = {"id": srv.model_name, "object": "model", "created": srv.created, "owned_by": "gptlab"}
            if path == "/v1/models":
                return self._send_json(200, {"object": "list", "data": [card]})
            if path[len("/v1/models/"):] != srv.model_name:
                return self._send_error(ApiError(404, f"The model '{path[len('/v1/models/'):]}' does not exist",
                                                 param="model", code="model_not_found"))
            self._send_json(200, card)
        elif path in ("/v1/completions", "/v1/chat/completions"):
            self._send_error(ApiError(405, f"{path} takes POST, not GET", code="method_not_allowed"))
        else:
            self._send_error(ApiError(404, f"no such endpoint: GET {path}", code="not_found"))

    # ------------------------------------------------------------------ POST

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        srv = self.server
        if path not in ("/v1/completions", "/v1/chat/completions"):
            # The body was not read, so this connection cannot carry another request.
            return self._send_error(ApiError(404, f"no such endpoint: POST {path}", code="not_found"), close=True)
        try:
            body = self._read_json()
        except ApiError as err:
            return self._send_error(err, close=err.status in (411, 413) or err.code == "bad_length")
        if not self._authorized():
            return self._send_error(self._auth_error())
        chat = path == "/v1/chat/completions"
        try:
            req = protocol.parse_request(body, chat, srv.engine.tokenizer, srv.chat_format,
                                         srv.engine.context_length)
        except ApiError as err:
            return self._send_error(err)
        if not srv.engine.alive:
            return self._send_error(ApiError(503, "the generation engine is not running", type="server_error",
                                             code="engine_down"))
        try:
            if req.stream:
                self._stream(req)
            else:
                self._complete(req)
        except (_ClientGone, BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except RuntimeError as exc:  # the engine stopped between the check above and the submit
            self._send_error(ApiError(503, str(exc), type="server_error", code="engine_down"), close=True)

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise ApiError(411, "send the body with a Content-Length (chunked request bodies are not accepted)",
                           code="length_required")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ApiError(411, "a Content-Length header is required", code="length_required")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"bad Content-Length {raw!r}", code="bad_length") from None
        if length > self.server.max_body_bytes:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of "
                                f"{self.server.max_body_bytes} bytes", code="request_too_large")
        data = self.rfile.read(length)
        if len(data) < length:
            raise ApiError(400, "the request body ended early", code="bad_length")
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})"[:300], code="invalid_json") from None

    def _submit(self, req: protocol.ParsedRequest) -> tuple[queue.Queue, list]:
        events: queue.Queue = queue.Queue()
        handles = []
        try:
            for i, prompt in enumerate(req.prompts):
                handles.append(self.server.engine.submit(prompt, req.params, events=events, tag=i))
        except BaseException:
            for h in handles:
                h.cancel()
            raise
        return events, handles

    def _events(self, events: queue.Queue, handles: list) -> Any:
        """Yield events until every request is done; cancel them all if the client leaves or we stop early."""
        remaining = len(handles)
        checked = time.monotonic()
        try:
            while remaining:
                # A non-streaming client that left is only noticed by looking: every quarter second.
                if time.monotonic() - checked > 0.25:
                    checked = time.monotonic()
                    if self._client_gone():
                        raise _ClientGone
                try:
                    event: Event = events.get(timeout=0.25)
                except queue.Empty:
                    continue
                if event.kind != "text":
                    remaining -= 1
                yield event
        finally:
            for h in handles:
                if h.finish_reason is None:
                    h.cancel()

    def _complete(self, req: protocol.ParsedRequest) -> None:
        srv = self.server
        rid, created = protocol.new_id(req.chat), protocol.now()
        events, handles = self._submit(req)
        texts: list[list[str]] = [[] for _ in handles]
        reasons: list[str] = ["stop"] * len(handles)
        prompt_tokens = completion_tokens = 0
        for event in self._events(events, handles):
            if event.kind == "text":
                texts[event.tag].append(event.text)
            elif event.kind == "done":
                reasons[event.tag] = event.finish_reason or "stop"
                prompt_tokens += event.prompt_tokens
                completion_tokens += event.completion_tokens
            else:
                return self._send_error(ApiError(500, event.text, type="server_error", code="engine_error"))
        use = protocol.usage(prompt_tokens, completion_tokens)
        outputs = ["".join(t) for t in texts]
        if req.chat:
            body = protocol.chat_body(rid, srv.model_name, created, outputs[0], reasons[0], use)
        else:
            body = protocol.completion_body(rid, srv.model_name, created, list(zip(outputs, reasons)), use)
        self._send_json(200, body)

    def _stream(self, req: protocol.ParsedRequest) -> None:
        srv = self.server
        rid, created = protocol.new_id(req.chat), protocol.now()
        events, handles = self._submit(req)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(obj: Any) -> None:
            payload = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
            self.wfile.flush()

        name = srv.model_name
        if req.chat:
            send(protocol.chat_chunk(rid, name, created, {"role": "assistant", "content": ""}, None))
        prompt_tokens = completion_tokens = 0
        for event in self._events(events, handles):
            if event.kind == "text":
                if req.chat:
                    send(protocol.chat_chunk(rid, name, created, {"content": event.text}, None))
                else:
                    send(protocol.completion_chunk(rid, name, created, event.tag, event.text, None))
            elif event.kind == "done":
                prompt_tokens += event.prompt_tokens
                completion_tokens += event.completion_tokens
                if req.chat:
                    send(protocol.chat_chunk(rid, name, created, {}, event.finish_reason))
                else:
                    send(protocol.completion_chunk(rid, name, created, event.tag, "", event.finish_reason))
            else:
                send(protocol.error_body(event.text, "server_error", code="engine_error"))
                break
        if req.include_usage:
            send(protocol.usage_chunk(rid, name, created, req.chat, protocol.usage(prompt_tokens, completion_tokens)))
        send(b"[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
