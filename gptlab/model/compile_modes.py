"""The names of gptlab's compile modes (no torch here: the command line's flags use them).

* ``default``: the transformer block compiled once for every layer; ready in seconds on a second start.
* ``max-autotune``: the whole decode step compiled ahead of time (AOTInductor), weights frozen,
  matrix products autotuned (inductor's generated C++ GEMMs for int8 weights); the fastest decoding
  of int8 weights, after minutes the first time, then loaded from disk in about a second.
"""

from __future__ import annotations

from gptlab.errors import GptlabError

COMPILE_MODES = ("default", "max-autotune")


def compile_mode(value: bool | str | None) -> str | None:
    """The mode a ``compile`` argument asks for: None (eager: None or False), ``"default"`` (True) or the mode named."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if value not in COMPILE_MODES:
        raise GptlabError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return value
