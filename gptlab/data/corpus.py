"""Text sources as documents, and the byte ranges that ``gptlab prepare`` hands to its workers.

A source is a named data set (``the-verdict``...), the ``python-stdlib`` corpus, a file, or a folder.
Each file is one document. For parallel work a big document is cut into *pieces* at byte positions
where the previous byte is visible ASCII (``!``..``~``) and the next one is ASCII whitespace: such a
position is a UTF-8 character boundary, and GPT-2's pre-tokenizer always ends a pre-token there and
does not look behind it (see :mod:`gptlab.tokenizer.pretokenize`), so encoding the pieces one by one
gives exactly the ids of encoding the whole text. Files are never loaded whole to plan the pieces.
"""

from __future__ import annotations

import os
import re
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gptlab.data.registry import DATASETS, dataset_path
from gptlab.errors import GptlabError

# Corpora made of local files, needing no download.
CORPORA = {
    "python-stdlib": "the running Python's standard library .py sources (no tests, no site-packages), "
    "one document per file, sorted by path",
}

# Folders of the standard library that are not "the library": tests and installed packages.
_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})

# A safe cut: a visible ASCII byte followed by an ASCII whitespace byte; the cut goes between them.
_SAFE_CUT = re.compile(rb"[\x21-\x7e](?=[ \t\n\r])")

ERRORS_MODES = ("strict", "replace")


@dataclass(frozen=True)
class Source:
    """What one ``--data`` argument names: its files, in document order."""

    spec: str  # as the user wrote it
    kind: str  # "dataset", "corpus", "file" or "folder"
    files: tuple[Path, ...]
    root: Path | None = None  # files are listed relative to it (corpus, folder)


@dataclass(frozen=True)
class Piece:
    """Bytes ``[start, end)`` of ``path``: part of document number ``doc`` (a doc's pieces are adjacent)."""

    path: Path
    start: int
    end: int
    doc: int

    @property
    def nbytes(self) -> int:
        """Length of the piece in bytes."""
        return self.end - self.start


def known_names() -> list[str]:
    """Every name a source can be given by: downloadable data sets and local corpora."""
    return sorted([*DATASETS, *CORPORA])


def stdlib_files() -> list[Path]:
    """The ``.py`` files of the running Python's standard library, sorted by relative path.

    Tests, ``site-packages`` and hidden folders are left out, so the list (and a corpus made from it)
    depends only on the Python version, not on what is installed.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                found.append((path.relative_to(root).as_posix(), path))
    found.sort()
    return [p for _, p in found]


def resolve_source(spec: str | os.PathLike) -> Source:
    """The files that ``spec`` (a data set name, ``python-stdlib``, a file or a folder) stands for."""
    name = str(spec)
    if name in DATASETS:
        return Source(name, "dataset", (dataset_path(name),))
    if name in CORPORA:
        files = stdlib_files()
        if not files:
            raise GptlabError(f"corpus {name!r}: found no .py files under {sysconfig.get_paths()['stdlib']}")
        return Source(name, "corpus", tuple(files), Path(sysconfig.get_paths()["stdlib"]))
    path = Path(name).expanduser()
    if path.is_file():
        return Source(name, "file", (path,))
    if path.is_dir():
        # Every file below, hidden ones (and those in hidden folders) left out, sorted by relative path.
        found = [(p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()]
        files = [p for rel, p in sorted(found) if not any(part.startswith(".") for part in rel.split("/"))]
        if not files:
            raise GptlabError(f"{path}: folder holds no files to read")
        return Source(name, "folder", tuple(files), path)
    raise GptlabError(f"{name}: no such file or folder, and not a known data set ({', '.join(known_names())})")


def safe_cut(f: BinaryIO, pos: int, end: int, block: int = 1 << 16) -> int:
    """The first safe cut position ``p`` with ``pos <= p < end`` in open file ``f``; ``end`` if none."""
    start = max(pos - 1, 0)  # the byte before a cut must be examined too
    while start < end - 1:
        f.seek(start)
        buf = f.read(min(block, end - start))
        m = _SAFE_CUT.search(buf)
        if m:
            return max(start + m.end(), pos)
        if start + len(buf) >= end or len(buf) < 2:
            break
        start += len(buf) - 1  # overlap one byte: a pair may straddle two blocks
    return end


def plan_pieces(
    files: Sequence[Path],
    *,
    chunk_bytes: int | None = None,
    max_bytes: int | None = None,
) -> list[Piece]:
    """Cut ``files`` (one document each) into pieces of about ``chunk_bytes`` at safe cuts.

    ``chunk_bytes=None`` keeps each document whole. ``max_bytes`` keeps only the first documents,
    up to about that many bytes: the document that crosses the limit is cut at the first safe cut
    at or after it, and later documents are dropped. Empty files are skipped (they are no document).
    """
    if chunk_bytes is not None and chunk_bytes < 1:
        raise GptlabError(f"chunk size must be at least 1 byte, got {chunk_bytes}")
    if max_bytes is not None and max_bytes < 1:
        raise GptlabError(f"the size cap must be at least 1 byte, got {max_bytes}")
    pieces: list[Piece] = []
    remaining = max_bytes
    doc = 0
    for path in files:
        try:
            size = path.stat().st_size
            if size == 0:
                continue
            with open(path, "rb") as f:
                end = size
                if remaining is not None and size > remaining:
                    end = safe_cut(f, remaining, size)
                pos = 0
                while chunk_bytes is not None and end - pos > chunk_bytes:
                    cut = safe_cut(f, pos + chunk_bytes, end)
                    if cut >= end:
                        break
                    pieces.append(Piece(path, pos, cut, doc))
                    pos = cut
                pieces.append(Piece(path, pos, end, doc))
        except OSError as exc:
            raise GptlabError(f"{path}: cannot read ({exc.strerror})") from None
        doc += 1
        if remaining is not None:
            remaining -= end
            if remaining <= 0:
                break
    return pieces


def read_piece(piece: Piece, errors: str = "strict") -> str:
    """The text of one piece; undecodable bytes name the file and the byte offset in it."""
    try:
        with open(piece.path, "rb") as f:
            f.seek(piece.start)
            data = f.read(piece.nbytes)
    except OSError as exc:
        raise GptlabError(f"{piece.path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise GptlabError(
            f"{piece.path}: not UTF-8 text (byte {piece.start + exc.start}: {exc.reason}); "
            f"convert it, or pass --errors replace"
        ) from None


def check_errors_mode(errors: str) -> None:
    """Reject an ``errors`` value other than ``strict`` or ``replace``."""
    if errors not in ERRORS_MODES:
        raise GptlabError(f"errors must be one of {', '.join(ERRORS_MODES)}, got {errors!r}")


def iter_documents(
    name_or_path: str | os.PathLike, *, errors: str = "strict", max_bytes: int | None = None
) -> Iterator[str]:
    """The documents (one per file, empty files skipped) of a data set, corpus, file or folder.

    ``max_bytes`` stops after about that many bytes (see :func:`plan_pieces`); these are exactly the
    documents ``gptlab prepare`` tokenizes.
    """
    check_errors_mode(errors)
    source = resolve_source(name_or_path)
    doc: list[str] = []
    current = None
    for piece in plan_pieces(source.files, max_bytes=max_bytes):
        if current is not None and piece.doc != current:
            yield "".join(doc)
            doc = []
        current = piece.doc
        doc.append(read_piece(piece, errors))
    if doc:
        yield "".join(doc)


def read_text(name_or_path: str | os.PathLike, errors: str = "strict") -> str:
    """Text of a named data set, a corpus (``python-stdlib``) or a file path, as UTF-8.

    The bytes are decoded as they are (no newline translation), so the text is exactly what
    ``gptlab prepare`` tokenizes. A corpus of several files is their concatenation, like ``cat``;
    :func:`iter_documents` gives them one by one. ``errors="replace"`` turns undecodable bytes into
    U+FFFD instead of failing.
    """
    return "".join(iter_documents(name_or_path, errors=errors))
