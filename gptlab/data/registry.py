"""Named data sets: where each comes from, its checksum, and where it lives in the cache.

``dataset_path(name)`` returns the file in the cache (:func:`gptlab.paths.cache_dir`), downloading it
once from its canonical address and checking its sha256. Offline, a missing file gives one error
saying exactly where to put it.
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
    """The local path of data set ``name``, downloading and verifying it on first use."""
    if name not in DATASETS:
        raise GptlabError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    path = cache_dir() / ds.filename
    if path.is_file():
        return path
    if not download:
        raise GptlabError(f"data set {name!r} is not in the cache; expected it at {path}")
    _download(ds, path)
    return path


def _download(ds: Dataset, path: Path) -> None:
    where = f"put the file there yourself ({ds.url}, sha256 {ds.sha256}) or set GPTLAB_DATA_DIR to a folder holding {ds.filename}"
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
    """Text of a named data set or of a file path, as UTF-8.

    ``errors="replace"`` turns undecodable bytes into U+FFFD instead of failing.
    """
    name = str(name_or_path)
    path = dataset_path(name) if name in DATASETS else Path(name)
    if not path.is_file():
        known = ", ".join(sorted(DATASETS))
        raise GptlabError(f"{path}: no such file, and not a known data set name ({known})")
    try:
        return path.read_text(encoding="utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise GptlabError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); convert it, or pass --errors replace"
        ) from None
