"""Floating-point dtypes by name: the strings that flags and settings use (``--dtype bfloat16``)."""

from __future__ import annotations

import torch

from gptlab.errors import GptlabError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype called ``name`` (``"bfloat16"`` -> ``torch.bfloat16``).

    Raises :class:`GptlabError` naming the allowed values for any other name.
    """
    try:
        return DTYPES[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value, e.g. a list from a config file
        raise GptlabError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None
