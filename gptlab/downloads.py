"""Downloading into gptlab's cache: where the cache is, how a file gets there, and how it is checked.

What gptlab downloads itself (data sets, tokenizer vocabularies) goes through here; models from the
Hugging Face hub go through ``huggingface_hub`` and its cache instead (:mod:`gptlab.model.hub`).

* :func:`cache_dir`: ``$GPTLAB_DATA_DIR``, else ``~/.cache/gptlab``.
* :func:`cached_file`: a :class:`CachedFile` (fixed address and sha256) in the cache, downloaded once
  and checked; a file already there is checked too, and never deleted (the cache may be a shared
  read-only folder).
* :func:`download_file`: one URL to ``FILE.part``, resuming a partial download (HTTP ``Range``), checked
  against an :class:`Expected` size and hash before it is renamed to ``FILE``; a file that does not
  match is removed, so nothing unchecked ever carries the real name.
* :func:`offline_errors` and :func:`put_by_hand`: a failed download is one :class:`GptlabError` line
  that names the file, says where to put it by hand, and names ``GPTLAB_DATA_DIR``.

The tokenizers import this module and the CLI imports them at start-up, so ``gptlab --help`` pays for
what is at the top here: ``hashlib`` and ``urllib.request`` are imported inside the functions that
use them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_bytes

DATA_DIR_ENV = "GPTLAB_DATA_DIR"
_TIMEOUT_S = 60
_CHUNK = 1 << 20


def cache_dir() -> Path:
    """The download cache: ``$GPTLAB_DATA_DIR`` if set, else ``~/.cache/gptlab``.

    Files are stored under fixed names (:attr:`CachedFile.filename`, ``hf/MODEL/``), so pointing
    ``GPTLAB_DATA_DIR`` at a folder that already holds them (as the tests do with ``../shared/data``)
    makes them available offline.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gptlab"


def part_path(dest: Path) -> Path:
    """Where a download of ``dest`` is written until it has been checked: ``dest`` + ``.part``."""
    return dest.with_name(dest.name + ".part")


# ------------------------------------------------------------------------------------ checking
@dataclass(frozen=True)
class Expected:
    """What a downloaded file must be; a field left None is not checked."""

    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # git's blob hash, which the Hugging Face hub gives for small files


def _digest(data: Path | bytes, h) -> str:  # noqa: ANN001 - a hashlib hash object
    if isinstance(data, bytes):
        h.update(data)
    else:
        with open(data, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    return _digest(Path(path), hashlib.sha256())


def mismatch(data: Path | bytes, expected: Expected) -> str | None:
    """None if ``data`` (a file, or bytes in memory) is what ``expected`` describes, else what differs."""
    import hashlib

    size = len(data) if isinstance(data, bytes) else data.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size {size} bytes, expected {expected.size}"
    if expected.sha256:
        algo, want, h = "sha256", expected.sha256, hashlib.sha256()
    elif expected.git_sha1:
        algo, want, h = "git sha1", expected.git_sha1, hashlib.sha1(b"blob %d\0" % size)
    else:
        return None
    got = _digest(data, h)
    return None if got == want else f"{algo} {got}, expected {want}"


# ------------------------------------------------------------------------------------ errors
def put_by_hand(place: str, origin: str, relative: str) -> str:
    """The offline way out: put ``place`` there yourself (from ``origin``), or point the cache elsewhere.

    ``place`` says what goes where (``"the file at /path"``); ``relative`` is what a folder given
    as ``$GPTLAB_DATA_DIR`` would have to hold instead.
    """
    return f"put {place} yourself (from {origin}) or set {DATA_DIR_ENV} to a folder holding {relative}"


@contextmanager
def offline_errors(what: str, place: str, hint: str) -> Iterator[None]:
    """Turn a network (or disk) failure inside the block into one :class:`GptlabError` line.

    The line is ``cannot download {what} {place} ({reason}); {hint}``: ``place`` says where from or
    to (``"to /cache/file"``), ``hint`` what to do offline (see :func:`put_by_hand`). ``urllib``'s
    errors and timeouts are all :class:`OSError`.
    """
    try:
        yield
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise GptlabError(f"cannot download {what} {place} ({reason}); {hint}") from None


# ------------------------------------------------------------------------------------ downloading
def download_file(
    url: str,
    dest: Path,
    expected: Expected,
    *,
    source: str,
    hint: str = "removed it, try again",
) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial one, then check and rename it.

    A ``.part`` file left by an interrupted download is continued with an HTTP ``Range`` request (from
    scratch if the server ignores it). The finished file must match ``expected``, else it is removed
    and :class:`GptlabError` says ``{dest}: downloaded file does not match {source} (...); {hint}``.
    Network errors are raised as they are (:class:`OSError`); wrap the call in :func:`offline_errors`.
    """
    import urllib.error
    import urllib.request

    part = part_path(dest)
    have = part.stat().st_size if part.exists() else 0
    if expected.size is not None and have > expected.size:
        have = 0  # longer than the real file: not a prefix of it
    if expected.size is None or have < expected.size:
        # A plain GET needs no Request object (and urllib sends "Accept-Encoding: identity" by itself).
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"}) if have else url
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                _copy(response, part, append=bool(have))
        except urllib.error.HTTPError as exc:
            if not (have and exc.code == 416):  # 416: nothing after `have` bytes, the .part may be whole
                raise
    problem = mismatch(part, expected)
    if problem:
        part.unlink()
        raise GptlabError(f"{dest}: downloaded file does not match {source} ({problem}); {hint}")
    os.replace(part, dest)


def _copy(response, part: Path, *, append: bool) -> None:  # noqa: ANN001 - an HTTP response
    """Stream an HTTP response into ``part``, appending to what is there when ``append``."""
    part.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed request leaves no folder behind
    with open(part, "ab" if append else "wb") as out:
        for block in iter(lambda: response.read(_CHUNK), b""):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())  # the bytes are on disk before the file can get its real name


# ------------------------------------------------------------------------------------ named files
@dataclass(frozen=True)
class CachedFile:
    """A named file (a data set, GPT-2's vocabulary) with a fixed address and sha256, cached as ``filename``."""

    name: str
    filename: str  # path inside the cache folder
    url: str
    sha256: str
    description: str
    # Turns the downloaded bytes into the file's bytes (e.g. pick one member of a zip).
    extract: Callable[[bytes], bytes] | None = None
    # Replaces the plain HTTP download for sources that are not a single file (returns the bytes,
    # or raises GptlabError saying why it cannot).
    fetch: Callable[[], bytes] | None = None

    @property
    def path(self) -> Path:
        """Where the file is (or would be) in the cache."""
        return cache_dir() / self.filename

    def label(self) -> str:
        """How errors name it: ``data set 'the-verdict'``."""
        return f"data set {self.name!r}"


def cached_file(entry: CachedFile, *, download: bool = True) -> Path:
    """The path of ``entry`` in the cache, downloading and checking it on first use.

    A file already in the cache must match ``entry.sha256``, else :class:`GptlabError` (the file is
    left alone). With ``download=False`` a missing file is an error that says where to put it.
    """
    path = entry.path
    if path.is_file():
        _verify_cached(entry, path)
        return path
    hint = put_by_hand(f"the file at {path}", f"{entry.url}, sha256 {entry.sha256}", entry.filename)
    if not download:
        raise GptlabError(f"{entry.label()} is not in the cache; {hint}")
    expected = Expected(sha256=entry.sha256)
    if entry.fetch is None and entry.extract is None:
        with offline_errors(entry.label(), f"to {path}", hint):
            download_file(entry.url, path, expected, source=entry.label(), hint=hint)
        return path
    # The downloaded bytes are not the file itself: build the file in memory, check it, then write it.
    if entry.fetch is not None:
        try:
            blob = entry.fetch()
        except GptlabError as exc:
            raise GptlabError(f"cannot download {entry.label()}: {exc}; {hint}") from None
    else:
        with offline_errors(entry.label(), f"to {path}", hint):
            blob = _read_url(entry.url)
    if entry.extract is not None:
        blob = entry.extract(blob)
    problem = mismatch(blob, expected)
    if problem:
        raise GptlabError(f"{path}: downloaded file does not match {entry.label()} ({problem}); {hint}")
    atomic_write_bytes(path, blob)
    return path


def _read_url(url: str) -> bytes:
    """The whole body of ``url`` in memory (for files that are extracted from what is downloaded)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
        return response.read()


# (path, size, mtime_ns) of files whose sha256 was checked in this process: hashing a large file on
# each use would cost ~20 ms, and a file replaced since then has a new mtime and is checked again.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify_cached(entry: CachedFile, path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = sha256_file(path)
    if digest != entry.sha256:
        raise GptlabError(
            f"{path}: sha256 {digest} does not match {entry.label()} (expected {entry.sha256}); the file is "
            f"corrupt or another version: delete it to download it again, or put the right file there"
        )
    _VERIFIED.add(key)
