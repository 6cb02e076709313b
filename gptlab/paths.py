"""Where gptlab keeps downloaded files (data sets, vocabularies, weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The data cache: ``$GPTLAB_DATA_DIR`` if set, else ``~/.cache/gptlab``.

    Files are stored under the names listed in :mod:`gptlab.data.registry`, so pointing
    ``GPTLAB_DATA_DIR`` at a folder that already holds them (as the tests do with ``../shared/data``)
    makes every named data set available offline.
    """
    env = os.environ.get("GPTLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gptlab"
