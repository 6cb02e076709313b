"""The names and sizes of gptlab's weight quantization (no torch here: the command line's flags use them)."""

from __future__ import annotations

QUANT_MODES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 64
