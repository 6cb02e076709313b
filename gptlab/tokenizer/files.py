"""Reading a saved tokenizer file: gptlab's JSON (any tokenizer type), or a tiktoken ranks file.

Kept below the tokenizer classes so that each of them (``BPETokenizer.load``) and
:func:`gptlab.tokenizer.registry.load_tokenizer` can read files without importing each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gptlab.errors import GptlabError

FORMAT = "gptlab-tokenizer"  # the "format" field of every tokenizer file gptlab writes


def read_tokenizer_file(path: str | os.PathLike) -> tuple[Path, dict | bytes]:
    """The file's path and contents: a parsed JSON object, or the raw bytes of a tiktoken ranks file.

    A folder stands for its ``tokenizer.json``. A file that starts with ``{`` must be a Hugging Face
    ``tokenizer.json`` (it has a ``model`` object) or a gptlab tokenizer file (JSON with ``"format":
    "gptlab-tokenizer"``); anything else is returned as bytes, for the caller to read as
    ``base64-token rank`` lines.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GptlabError(f"{path}: cannot read tokenizer file ({exc.strerror})") from None
    if raw[:1] != b"{":
        return path, raw
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GptlabError(f"{path}: corrupt tokenizer file, not valid JSON ({exc})") from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return path, payload  # a Hugging Face tokenizer.json
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise GptlabError(
            f"{path}: neither a Hugging Face tokenizer.json (no \"model\") nor a gptlab tokenizer file "
            f"(no \"format\": \"{FORMAT}\")"
        )
    return path, payload
