"""The HTTP server: the ASGI app (:mod:`gptlab.serve.app`) on uvicorn, with gptlab's connection policy.

:class:`ApiServer` binds its socket when it is made (so a busy port is an error at once, and port 0
gets its real number), then serves in the foreground (:meth:`ApiServer.run`, the CLI: SIGINT/SIGTERM
shut down gracefully) or in a background thread (:meth:`ApiServer.start`, tests and benchmarks).

Graceful shutdown: the server stops accepting connections and closes idle ones; running requests get
``shutdown_timeout`` seconds to finish. Then the engine stops, and whatever is still generating ends
with an error (an ``error`` event and ``[DONE]`` on a stream, a 503 otherwise), so no client is left
without an answer. :meth:`run` then returns, and ``gptlab serve`` exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from typing import Any

import uvicorn

from gptlab.data.chat_format import ChatFormat, PlainChat
from gptlab.serve import access_log
from gptlab.serve.app import DEFAULT_MAX_BODY, ServeSettings, app_context, create_app
from gptlab.serve.connections import ConnectionLimits, GuardedH11Protocol
from gptlab.serve.engine import Engine

_MAX_HEAD_BYTES = 16 * 1024  # request line plus headers; past it, 414 or 431
_KEEP_ALIVE_S = 5.0


class _Uvicorn(uvicorn.Server):
    """uvicorn's server with gptlab's shutdown: drain for a grace period, then end what is left, exit 0."""

    def __init__(self, config: uvicorn.Config, api: ApiServer) -> None:
        super().__init__(config)
        self.api = api

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down (so the process dies of it); a graceful
        # stop of a service is a success, so gptlab returns normally instead.
        self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ctx = app_context(self.api.app)
        ctx.draining = True
        loop = asyncio.get_running_loop()
        # After the grace period, stopping the engine fails every unfinished request with an error
        # event, which each handler turns into its last message; uvicorn's wait then ends.
        timer = loop.call_later(self.api.shutdown_timeout,
                                lambda: threading.Thread(target=self.api.engine.stop, daemon=True).start())
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()


class ApiServer:
    """The API on a bound socket; see :func:`create_server` for the settings."""

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
        allowed_hosts: Sequence[str] = (),
        cors_origins: Sequence[str] = (),
        max_connections: int = 1000,
        header_timeout: float = 10.0,
        shutdown_timeout: float = 30.0,
        access_log_style: str = "off",
    ) -> None:
        self.engine = engine
        self.shutdown_timeout = shutdown_timeout
        settings = ServeSettings(model_name=model_name, api_key=api_key or None,
                                 chat_format=chat_format or PlainChat(), max_body_bytes=max_body_bytes,
                                 body_timeout=max(header_timeout, 30.0), bind_host=host,
                                 allowed_hosts=tuple(allowed_hosts), cors_origins=tuple(cors_origins))
        self.app = create_app(engine, settings)
        access_log.configure(access_log_style)
        # uvicorn's own logger reports protocol warnings the access log already shows as 4xx lines.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        limits = ConnectionLimits(max_connections=max_connections, header_timeout=header_timeout)
        protocol = type("GptlabH11Protocol", (GuardedH11Protocol,), {"limits": limits})
        self.config = uvicorn.Config(
            self.app, http=protocol, lifespan="off", log_config=None, access_log=False, server_header=False,
            timeout_keep_alive=int(_KEEP_ALIVE_S), timeout_graceful_shutdown=int(shutdown_timeout) + 10,
            h11_max_incomplete_event_size=_MAX_HEAD_BYTES, backlog=2048,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=2048)
        self.server_address = self.socket.getsockname()[:2]
        self._server = _Uvicorn(self.config, self)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket (the real port when 0 was asked for)."""
        host, port = self.server_address
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def model_name(self) -> str:
        """The model id the API reports."""
        return app_context(self.app).settings.model_name

    def run(self) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (graceful shutdown); the engine is stopped on return."""
        self.engine.start()
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.engine.stop()
            self.socket.close()

    def start(self) -> ApiServer:
        """Start the engine and serve in a background thread; returns self once it accepts requests."""
        self.engine.start()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[self.socket])),
                                        name="gptlab-http", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            threading.Event().wait(0.01)
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Shut down gracefully (as on SIGTERM), stop the engine, release the port."""
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self.engine.stop()
        self.socket.close()


def create_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> ApiServer:
    """An :class:`ApiServer` for ``engine`` bound to ``host:port`` (port 0 picks a free one); not started yet.

    Keywords: ``api_key``, ``model_name``, ``chat_format``, ``max_body_bytes``, ``allowed_hosts`` (more
    ``Host`` names to accept; ``*`` any), ``cors_origins`` (browser origins allowed; none by default),
    ``max_connections`` (open at once), ``header_timeout`` (seconds for a whole request head),
    ``shutdown_timeout`` (grace period for running requests), ``access_log_style`` (text, json, off).
    Raises :class:`OSError` when the address cannot be bound.
    """
    return ApiServer(engine, host, port, **kwargs)
