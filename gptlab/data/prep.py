"""``gptlab prepare``: tokenize text sources into ``train.bin``/``val.bin`` token files plus ``meta.json``.

The output folder follows nanoGPT's layout: flat files of token ids (uint16, or uint32 for
vocabularies over 65,536) that :class:`gptlab.data.prepared.PreparedData` opens as numpy memmaps, so
a corpus larger than memory can be trained on. Documents (files) are joined with the tokenizer's
``<|endoftext|>`` id; the joined stream is split nanoGPT's way, the last ``val_fraction`` of the
tokens becoming ``val.bin``.

Work is spread over forked worker processes, each reading, decoding and encoding one byte range of
one file (see :mod:`gptlab.data.corpus` for why the ranges do not change the ids) while this process
writes the results in order. Every file is written under a temporary name and renamed at the end;
``meta.json`` comes last, so a folder with a ``meta.json`` is always complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import reduce
from itertools import islice
from pathlib import Path

import numpy as np

from gptlab.data.corpus import Piece, Source, check_errors_mode, plan_pieces, resolve_source
from gptlab.data.encoders import PieceEncoder, encode_piece, init_worker, scan_piece
from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text, default_mode
from gptlab.tokenizer.base import ENDOFTEXT, Tokenizer
from gptlab.tokenizer.bpe import GPT2_PATTERN, BPETokenizer
from gptlab.tokenizer.char import CharTokenizer
from gptlab.tokenizer.registry import save_tokenizer

META_FORMAT = "gptlab-prepared"
SPLIT_RULE = (
    "the joined token stream is cut at int(tokens * (1 - val_fraction)): "
    "train.bin holds the tokens before, val.bin the rest"
)

_MIN_CHUNK = 256 << 10
_MAX_CHUNK = 16 << 20


def prepare(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | Tokenizer = "gpt2",
    val_fraction: float = 0.1,
    workers: int | None = None,
    errors: str = "strict",
    max_bytes: int | None = None,
    chunk_bytes: int | None = None,
    use_tiktoken: bool = True,
    progress: bool | None = False,
) -> dict:
    """Tokenize ``data`` (names, files or folders) into ``out_dir``; returns the ``meta.json`` contents.

    Args:
        tokenizer: ``"gpt2"`` (recorded by name), ``"char"`` (alphabet built from the data), a
            tokenizer file, or a :class:`Tokenizer`; all but ``"gpt2"`` are saved as ``tokenizer.json``.
        val_fraction: share of the tokens, at the end of the stream, that goes to ``val.bin`` (0 <= f < 1).
        workers: processes to encode with (default: the CPUs this process may use).
        errors: ``"strict"`` (undecodable UTF-8 is an error naming file and byte) or ``"replace"``.
        max_bytes: keep only about the first ``max_bytes`` of text (see :func:`plan_pieces`).
        chunk_bytes: size of the byte ranges workers encode (default: from the total and ``workers``).
        use_tiktoken: encode with tiktoken when the tokenizer allows (same ids, faster).
        progress: show a tqdm bar of bytes encoded (None: only when stderr is a terminal).
    """
    check_errors_mode(errors)
    if not 0 <= val_fraction < 1:
        raise GptlabError(f"val fraction must be in [0, 1), got {val_fraction}")
    specs = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not specs:
        raise GptlabError("no data given: name at least one data set, file or folder")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise GptlabError(f"workers must be at least 1, got {workers}")

    tok, tok_ref = _resolve_tokenizer(tokenizer)
    sources = [resolve_source(s) for s in specs]
    files = [f for s in sources for f in s.files]
    if chunk_bytes is None:
        chunk_bytes = _auto_chunk(files, workers, max_bytes)
    splittable = tok is None or _splittable(tok)
    pieces = plan_pieces(files, chunk_bytes=chunk_bytes if splittable else None, max_bytes=max_bytes)
    if not pieces:
        raise GptlabError(f"no text to prepare: {', '.join(map(str, specs))} holds only empty files")
    n_docs = pieces[-1].doc + 1
    total_bytes = sum(p.nbytes for p in pieces)
    workers = min(workers, len(pieces))

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GptlabError(f"{out}: exists and is not a folder (--out names the folder to write)")

    if tok is None:  # "char": the alphabet is every character of the data
        with _mapper(workers, None, errors) as run:
            sets = _progress_iter(run(scan_piece, pieces), pieces, progress, "scanning characters")
            cps = reduce(np.union1d, sets, np.empty(0, dtype=np.uint32))
        tok = CharTokenizer("".join(map(chr, cps.tolist())))
    if n_docs > 1 and tok.eot_id is None:
        raise GptlabError(f"tokenizer {tok.name!r} has no {ENDOFTEXT} token to separate the {n_docs} documents")
    encoder = PieceEncoder(tok, use_tiktoken=use_tiktoken)

    out.mkdir(parents=True, exist_ok=True)
    tmp_train = _tmp_name(out, "train.bin")
    tmp_val = _tmp_name(out, "val.bin")
    try:
        with _mapper(workers, encoder, errors) as run:
            results = run(encode_piece, pieces)  # workers start now; describe sources meanwhile
            sources_meta = [_describe(s, pieces) for s in sources]
            n_tokens = _write_stream(tmp_train, pieces, results, tok.eot_id, encoder.dtype, progress)
        n_train = int(n_tokens * (1 - val_fraction))
        if n_train < 1:
            raise GptlabError(f"too little text: {n_tokens} tokens leave none for training at val fraction {val_fraction}")
        _split_tail(tmp_train, tmp_val, n_train * encoder.dtype.itemsize)
        meta = {
            "format": META_FORMAT,
            "version": 1,
            "tokenizer": {"name": tok.name, "type": type(tok).__name__} | tok_ref,
            "n_vocab": tok.n_vocab,
            "eot_id": tok.eot_id,
            "dtype": encoder.dtype.name,
            "tokens": n_tokens,
            "train": {"file": "train.bin", "tokens": n_train},
            "val": {"file": "val.bin", "tokens": n_tokens - n_train},
            "val_fraction": val_fraction,
            "split": SPLIT_RULE,
            "documents": n_docs,
            "separator": f"{ENDOFTEXT} (id {tok.eot_id}) between documents; a document is one file",
            "bytes": total_bytes,
            "max_bytes": max_bytes,
            "errors": errors,
            "sources": sources_meta,
            "encoder": encoder.engine,
            "pieces": len(pieces),
        }
        _publish(out, tmp_train, tmp_val, tok if "file" in tok_ref else None, meta)
    finally:
        for tmp in (tmp_train, tmp_val):
            tmp.unlink(missing_ok=True)
    return meta


# ------------------------------------------------------------------------------------ tokenizer
def _resolve_tokenizer(spec: str | os.PathLike | Tokenizer) -> tuple[Tokenizer | None, dict]:
    """The tokenizer (None for "char": built later from the data) and how meta.json refers to it."""
    from gptlab.tokenizer.registry import get_tokenizer, gpt2_tokenizer

    saved = {"file": "tokenizer.json"}
    if isinstance(spec, Tokenizer):
        return spec, saved
    name = str(spec)
    if name == "gpt2":
        return gpt2_tokenizer(), {"name": "gpt2"}
    if name == "char":
        return None, saved
    if name == "simple":
        raise GptlabError("tokenizer 'simple' cannot prepare data (its vocabulary drops text); use gpt2, char or a tokenizer file")
    return get_tokenizer(name), saved


def _splittable(tok: Tokenizer) -> bool:
    """Whether cutting at safe cuts keeps ids unchanged: characters, or GPT-2's pre-tokenizer."""
    return isinstance(tok, CharTokenizer) or (
        isinstance(tok, BPETokenizer) and tok.pattern == GPT2_PATTERN and tok.normalizer is None and not tok.has_added_matcher
    )


# ------------------------------------------------------------------------------------ processes
def default_workers() -> int:
    """The CPUs this process may run on: how many encoding processes ``prepare`` starts by default."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _auto_chunk(files: Sequence[Path], workers: int, max_bytes: int | None) -> int:
    """About four pieces per worker (so the last piece does not leave cores idle), within bounds."""
    total = sum(f.stat().st_size for f in files)
    if max_bytes is not None:
        total = min(total, max_bytes)
    return int(min(max(total // (4 * workers), _MIN_CHUNK), _MAX_CHUNK))


@contextmanager
def _mapper(workers: int, encoder: PieceEncoder | None, errors: str) -> Iterator[Callable]:
    """An ordered, lazy ``map(fn, pieces)`` over ``workers`` processes (in this process when 1).

    Fork is used where it exists: the children inherit the encoder already built here, so starting
    them costs milliseconds, not a tokenizer load each. A ``ProcessPoolExecutor`` rather than
    ``multiprocessing.Pool``: when the consumer stops early (a piece that is not UTF-8), ``Pool``'s
    terminate can wait forever on its task-feeding thread (seen under load in the test suite), while
    the executor cancels what has not started and reports dead workers instead of hanging.
    """
    if workers == 1:
        init_worker(encoder, errors)
        try:
            yield map
        finally:
            init_worker(None, errors)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=(encoder, errors))
    try:
        yield lambda fn, items: _ordered_map(executor, fn, items, 2 * workers)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _ordered_map(executor: ProcessPoolExecutor, fn: Callable, items: Sequence, window: int) -> Iterator:
    """``map(fn, items)`` in order, with at most ``window`` pieces in flight (memory stays bounded)."""
    pending: deque = deque()
    it = iter(items)
    for item in islice(it, window):
        pending.append(executor.submit(fn, item))
    while pending:
        result = pending.popleft().result()
        for item in islice(it, 1):
            pending.append(executor.submit(fn, item))
        yield result


def _progress_iter(results: Iterator, pieces: Sequence[Piece], progress: bool | None, desc: str) -> Iterator:
    from tqdm import tqdm

    with tqdm(total=sum(p.nbytes for p in pieces), unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=None if progress is None else not progress) as bar:
        for piece, result in zip(pieces, results):
            yield result
            bar.update(piece.nbytes)


def _write_stream(
    path: Path,
    pieces: Sequence[Piece],
    results: Iterator[np.ndarray],
    eot_id: int | None,
    dtype: np.dtype,
    progress: bool | None,
) -> int:
    """Write each piece's ids in order, ``eot_id`` between documents; returns the token count."""
    eot = np.array([eot_id if eot_id is not None else 0], dtype=dtype).tobytes()
    n = 0
    prev_doc = None
    with open(path, "wb") as f:
        for piece, ids in zip(pieces, _progress_iter(results, pieces, progress, "tokenizing")):
            if prev_doc is not None and piece.doc != prev_doc:
                f.write(eot)
                n += 1
            prev_doc = piece.doc
            f.write(ids.tobytes())
            n += len(ids)
        f.flush()
        os.fsync(f.fileno())
    return n


def is_prepared_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by :func:`prepare` (its meta.json says so)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == META_FORMAT


# ------------------------------------------------------------------------------------ files
def _tmp_name(out: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
    os.close(fd)
    os.chmod(tmp, default_mode())  # mkstemp makes it 0600; the published file follows the umask
    return Path(tmp)


def _split_tail(train: Path, val: Path, cut: int) -> None:
    """Move the bytes of ``train`` from ``cut`` on into ``val`` (only the tail is copied)."""
    with open(train, "r+b") as src, open(val, "wb") as dst:
        src.seek(cut)
        shutil.copyfileobj(src, dst, 1 << 20)
        src.truncate(cut)
        for f in (src, dst):
            f.flush()
            os.fsync(f.fileno())


def _publish(out: Path, tmp_train: Path, tmp_val: Path, tokenizer: Tokenizer | None, meta: dict) -> None:
    """Rename the finished files into place; meta.json is removed first and written last.

    While the new files replace the old ones the folder has no meta.json, so a reader finds either
    a complete set or a clear "no meta.json" error, never new tokens described by old metadata.
    """
    meta_path = out / "meta.json"
    meta_path.unlink(missing_ok=True)
    os.replace(tmp_train, out / "train.bin")
    os.replace(tmp_val, out / "val.bin")
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    else:
        (out / "tokenizer.json").unlink(missing_ok=True)
    atomic_write_text(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _describe(source: Source, pieces: Sequence[Piece]) -> dict:
    """Provenance of one source for meta.json: what it is, its size and sha256, how much was used."""
    from gptlab.data.registry import DATASETS
    from gptlab.downloads import sha256_file

    mine = set(source.files)
    used_files = {p.path for p in pieces if p.path in mine}
    used = sum(p.nbytes for p in pieces if p.path in mine)
    info: dict = {"spec": source.spec, "kind": source.kind}
    if source.root is None:
        path = source.files[0]
        # A named data set's sha256 was verified on the way in; other files are hashed here.
        digest = DATASETS[source.spec].sha256 if source.kind == "dataset" else sha256_file(path)
        info |= {"path": str(path), "bytes": path.stat().st_size, "sha256": digest}
    else:
        # Only the files used are hashed: with --max-mb that is a small part of a big corpus.
        lines = [f"{p.relative_to(source.root).as_posix()} {sha256_file(p)}\n" for p in source.files if p in used_files]
        info |= {
            "root": str(source.root),
            "files": len(source.files),
            "files_used": len(lines),
            "bytes": sum(p.stat().st_size for p in source.files),
            "sha256": hashlib.sha256("".join(lines).encode("utf-8")).hexdigest(),
            "sha256_of": "the manifest of the files used: one 'relative/path sha256' line per file, in order",
        }
    info["bytes_used"] = used
    return info
