"""Access logs: one line per request (client, method, path, status, tokens, latency), never a body.

``text`` lines read like a web server's; ``json`` lines are one object each, for log shippers. The
query string is left out as well as the body: either may carry what a client would not want logged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("gptlab.access")
STYLES = ("text", "json", "off")


def record(**fields: Any) -> None:
    """Log one request: ``client``, ``method``, ``path``, ``status``, and what else is known.

    Known extras: ``prompt_tokens``, ``completion_tokens``, ``latency_s``.
    """
    if logger.isEnabledFor(logging.INFO):
        logger.info("request", extra={"access": fields})


class AccessFormatter(logging.Formatter):
    """Renders :func:`record`'s fields as a text line or a JSON object."""

    def __init__(self, style: str = "text") -> None:
        super().__init__()
        self.style = style

    def format(self, rec: logging.LogRecord) -> str:  # noqa: A003 - logging's name
        fields = dict(getattr(rec, "access", {}))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.created)) + f".{int(rec.msecs):03d}Z"
        if self.style == "json":
            return json.dumps({"time": stamp, **fields})
        tokens = ""
        if "completion_tokens" in fields:
            tokens = f" tokens={fields.get('prompt_tokens', 0)}+{fields['completion_tokens']}"
        latency = f" {fields['latency_s'] * 1000:.1f}ms" if "latency_s" in fields else ""
        return (f"{stamp} {fields.get('client', '-')} \"{fields.get('method', '-')} {fields.get('path', '-')}\" "
                f"{fields.get('status', '-')}{tokens}{latency}")


def configure(style: str) -> None:
    """Send access lines to stderr in ``style`` (``text`` or ``json``), or turn them ``off``."""
    if style not in STYLES:
        raise ValueError(f"access log style must be one of {', '.join(STYLES)}, got {style!r}")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = False
    if style == "off":
        logger.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(AccessFormatter(style))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
