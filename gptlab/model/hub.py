"""Download GPT-2 checkpoints from the Hugging Face hub with nothing but ``urllib``.

``ensure_model("gpt2")`` returns ``cache_dir()/hf/gpt2`` holding ``config.json`` and
``model.safetensors``, downloading what is missing. The hub part is here: its addresses, and reading
the size and hash it announces (``X-Linked-Size`` / ``X-Linked-Etag``, the sha256 of large files; for
small files the ``ETag`` is git's blob sha1). The download itself is :func:`gptlab.downloads.download_file`:
to ``FILE.part``, resumed where it stopped (HTTP ``Range``), checked before it gets its real name.
``GPTLAB_HF_ENDPOINT`` overrides the hub address (a mirror, or the tests' local server).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from gptlab.downloads import Expected, cache_dir, download_file, offline_errors, put_by_hand
from gptlab.errors import GptlabError

HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
MODEL_FILES = ("config.json", "model.safetensors")
_TIMEOUT_S = 30


def endpoint() -> str:
    """The hub's base address (``$GPTLAB_HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("GPTLAB_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def model_dir(name: str) -> Path:
    """Where hub model ``name`` lives in the cache."""
    return cache_dir() / "hf" / name


def file_url(repo: str, filename: str) -> str:
    """The hub's download address for one file of a repository's main branch."""
    return f"{endpoint()}/{repo}/resolve/main/{filename}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keep the first response: the hub puts a large file's size and sha256 on its redirect."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, D102
        return None


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"').lower()


def _head(url: str):  # noqa: ANN202
    """Headers of a HEAD request that does not follow redirects, and the redirect target (or None)."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, method="HEAD", headers={"Accept-Encoding": "identity"})
    try:
        response = opener.open(request, timeout=_TIMEOUT_S)
        return response.headers, None
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        return exc.headers, exc.headers.get("Location")


def remote_info(url: str) -> Expected:
    """Size and hashes of the file at ``url``, from the hub's response headers.

    A large (LFS) file answers with a redirect to a storage host that carries ``X-Linked-Size`` and
    ``X-Linked-Etag``; that first response is the one to read. A redirect within the hub (a renamed
    repository, a cache path) is followed, as ``huggingface_hub`` does.
    """
    for _ in range(5):
        headers, location = _head(url)
        if location is None or headers.get("X-Linked-Etag") or headers.get("X-Linked-Size"):
            break
        target = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
            break  # a storage host: the hub's headers are all we get
        url = target
    linked = _etag(headers.get("X-Linked-Etag"))
    etag = _etag(headers.get("ETag"))
    announced = headers.get("X-Linked-Size") or (None if linked or location else headers.get("Content-Length"))
    size = int(announced) if announced else None
    if linked and re.fullmatch(r"[0-9a-f]{64}", linked):
        return Expected(size, sha256=linked)
    if etag and re.fullmatch(r"[0-9a-f]{64}", etag):
        return Expected(size, sha256=etag)
    if etag and re.fullmatch(r"[0-9a-f]{40}", etag):
        return Expected(size, git_sha1=etag)
    return Expected(size)


def ensure_model(name: str, download: bool = True, progress: bool = True) -> Path:
    """The cache folder of hub model ``name`` with every file of :data:`MODEL_FILES`, downloaded if missing."""
    repo = HUB_MODELS[name]
    directory = model_dir(name)
    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if not missing:
        return directory
    how = put_by_hand(f"{' and '.join(MODEL_FILES)} into {directory}", f"{endpoint()}/{repo}", f"hf/{name}/")
    how += " (or pass a folder that holds them)"
    if not download:
        raise GptlabError(f"model {name!r} is not in the cache; {how}")
    for filename in missing:
        url = file_url(repo, filename)
        with offline_errors(f"{filename} of {name!r}", f"from {endpoint()}", f"offline, {how}"):
            download_file(url, directory / filename, remote_info(url), source="the hub", progress=progress)
    return directory
