"""Small file helpers: atomic writes, so a crash never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


_UMASK: int | None = None


def umask() -> int:
    """The process's file-creation mask (read once; ``os.umask`` can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def default_mode(folder: bool = False) -> int:
    """The permissions a plain ``open()`` (or ``mkdir``) would give a new file: 0666 (0777) less the umask.

    Temporary files from :mod:`tempfile` are created 0600 (0700 for folders); files renamed into place
    from them get these permissions instead, like files every other tool writes.
    """
    return (0o777 if folder else 0o666) & ~umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    ``os.replace`` is atomic on POSIX and Windows, so readers see the old file or the new one,
    never a mix; the data is fsync'ed before the rename so a power cut cannot leave an empty file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))
