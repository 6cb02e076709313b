"""Lazy package exports: a package names its public objects without importing torch to do so.

``gptlab --help`` and ``import gptlab.model.config`` must not pay seconds for torch; a package's
``__init__`` therefore maps each exported name to the module that defines it, and the module is
imported on first use of the name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` when ``name`` is first used."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
