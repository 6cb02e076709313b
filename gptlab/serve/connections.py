"""The connection policy under the HTTP app: deadlines, a connection cap, and JSON for protocol errors.

uvicorn's h11 protocol handles HTTP/1.1 itself; :class:`GuardedH11Protocol` adds what a server facing
untrusted clients needs and uvicorn leaves out:

* **A deadline on the whole request head.** uvicorn's keep-alive timer restarts on every byte, so a
  client sending one header byte every few seconds ("slowloris") holds its connection for ever. Here a
  connection that has not delivered a complete request head ``header_timeout`` seconds after it opened
  (or after its previous response) is answered 408 and closed.
* **A cap on open connections.** Past ``max_connections``, the connection that has waited longest for
  its request head is closed, so a flood of idle or slow connections cannot lock out the next real
  request (``/health`` keeps answering). Only when every connection is inside a request does the newest
  one get a 503.
* **No Nagle delay.** A response goes out as two writes (head, then body); with Nagle's algorithm on,
  the second waits for the client's ACK of the first, which a client delays by 40 ms, so every
  keep-alive request took 44 ms. asyncio turns Nagle off only on sockets whose ``proto`` says TCP,
  which sockets made by :func:`socket.create_server` (proto 0) do not, so it is turned off here.
* **OpenAI-style JSON** for errors the app never sees: a malformed request is a 400, a request line
  too long a 414, a header block too large a 431, each with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from gptlab.serve import access_log


@dataclass(frozen=True)
class ConnectionLimits:
    """``max_connections`` open at once; ``header_timeout`` seconds to send a whole request head."""

    max_connections: int = 1000
    header_timeout: float = 10.0


def raw_error(status: int, reason: str, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 error response with an OpenAI-style JSON body, closing the connection.

    Written as bytes because these answers go out when h11 has no request to answer (a timeout before
    the head was complete, a head it could not parse).
    """
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline, a connection cap and JSON protocol errors.

    A subclass per server sets :attr:`limits` (uvicorn builds protocols from a class and its config).
    """

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0

    # ------------------------------------------------------------------ the head deadline

    def _awaiting_head(self) -> bool:
        """True between requests: no request in progress and no complete head received yet."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_expired)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        if self.conn.trailing_data[0]:  # part of a head arrived: say why the connection ends
            self._log_error(408)
            self.transport.write(raw_error(408, "Request Timeout",
                                           f"the request head did not arrive within {self.limits.header_timeout:g} s",
                                           "request_timeout"))
        self.transport.close()

    # ------------------------------------------------------------------ uvicorn's hooks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm_head_deadline()
        if len(self.connections) > self.limits.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and not self._awaiting_head():
            self._cancel_head_deadline()  # a whole head arrived: the request is the app's business now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._awaiting_head():
            self._arm_head_deadline()  # the next request on this connection gets its own deadline

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 could not parse, in JSON: 414/431 when the head was too long, else 400."""
        buffered = self.conn.trailing_data[0]
        limit = self.config.h11_max_incomplete_event_size or h11._connection.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
        if len(buffered) > limit and b"\n" not in buffered:
            status, reason, text, code = 414, "URI Too Long", "the request line is too long", "uri_too_long"
        elif len(buffered) > limit:
            status, reason, text, code = (431, "Request Header Fields Too Large", "the request headers are too large",
                                          "headers_too_large")
        else:
            status, reason, text, code = 400, "Bad Request", "malformed HTTP request", "bad_request"
        self._log_error(status)
        self.transport.write(raw_error(status, reason, f"{text} (limit {limit} bytes)" if status != 400 else text,
                                       code))
        self.transport.close()

    # ------------------------------------------------------------------ the connection cap

    def _shed(self) -> None:
        """Over the cap: close the connection that has waited longest for a head (maybe this one)."""
        idle = [c for c in self.connections
                if isinstance(c, GuardedH11Protocol) and not c.transport.is_closing() and c._awaiting_head()]
        if idle:
            victim = min(idle, key=lambda c: c._waiting_since)
            victim._cancel_head_deadline()
            victim.transport.close()
            return
        self._log_error(503)
        self.transport.write(raw_error(503, "Service Unavailable", "too many open connections; try again",
                                       "too_many_connections"))
        self.transport.close()

    def _log_error(self, status: int) -> None:
        access_log.record(client="%s:%d" % self.client if self.client else "-", method="-", path="-", status=status)
