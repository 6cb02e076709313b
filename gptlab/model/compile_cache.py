"""Where compiled code is kept between processes: gptlab's compile cache folder.

Inductor's persistent caches (:mod:`gptlab.model.compiled`) and the ahead-of-time packages
(:mod:`gptlab.model.packaged`) both live under it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

CACHE_DIR_ENV = "GPTLAB_CACHE_DIR"
_INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_cache_dir() -> Path:
    """Where compiled code is kept between processes: ``$GPTLAB_CACHE_DIR/compile``, else ``~/.cache/gptlab/compile``.

    Not ``$GPTLAB_DATA_DIR`` (the download cache), which may be a shared read-only folder.
    """
    root = os.environ.get(CACHE_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "gptlab"
    return base / "compile"


def use_compile_cache() -> str | None:
    """Point inductor's persistent caches at :func:`compile_cache_dir` (per torch version); returns the folder used.

    An explicit ``TORCHINDUCTOR_CACHE_DIR`` wins (and so does a folder inductor already chose in this
    process: it sets that variable itself). None when the folder cannot be created: inductor then
    keeps its default under the temporary directory.
    """
    if os.environ.get(_INDUCTOR_CACHE_ENV):
        return os.environ[_INDUCTOR_CACHE_ENV]
    # The torch version in the name: old versions' entries can be deleted as a whole, and a shared
    # home folder used by several environments keeps them apart.
    folder = compile_cache_dir() / f"torch-{torch.__version__}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    os.environ[_INDUCTOR_CACHE_ENV] = str(folder)
    return str(folder)
