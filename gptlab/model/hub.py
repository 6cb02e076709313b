"""Download GPT-2 checkpoints from the Hugging Face hub with nothing but ``urllib``.

``ensure_model("gpt2")`` returns ``cache_dir()/hf/gpt2`` holding ``config.json`` and
``model.safetensors``, downloading what is missing. Downloads go to ``FILE.part`` and resume from
where they stopped (HTTP ``Range``); a finished file is checked against the size and hash the hub
announces (``X-Linked-Size`` / ``X-Linked-Etag``, the sha256 of large files; for small files the
``ETag`` is git's blob sha1) before it gets its real name. ``GPTLAB_HF_ENDPOINT`` overrides the hub
address (a mirror, or the tests' local server).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.paths import cache_dir

HUB_MODELS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
MODEL_FILES = ("config.json", "model.safetensors")
_TIMEOUT_S = 30
_CHUNK = 1 << 20


def endpoint() -> str:
    """The hub's base address (``$GPTLAB_HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("GPTLAB_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def model_dir(name: str) -> Path:
    """Where hub model ``name`` lives in the cache."""
    return cache_dir() / "hf" / name


def file_url(repo: str, filename: str) -> str:
    """The hub's download address for one file of a repository's main branch."""
    return f"{endpoint()}/{repo}/resolve/main/{filename}"


@dataclass
class RemoteFile:
    """What the hub says about a file before we download it."""

    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None


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


def remote_info(url: str) -> RemoteFile:
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
    size = headers.get("X-Linked-Size") or (None if linked or location else headers.get("Content-Length"))
    info = RemoteFile(size=int(size) if size else None)
    if linked and re.fullmatch(r"[0-9a-f]{64}", linked):
        info.sha256 = linked
    elif etag and re.fullmatch(r"[0-9a-f]{64}", etag):
        info.sha256 = etag
    elif etag and re.fullmatch(r"[0-9a-f]{40}", etag):
        info.git_sha1 = etag
    return info


def _verify(path: Path, info: RemoteFile) -> str | None:
    """None if ``path`` matches ``info``, else why not."""
    size = path.stat().st_size
    if info.size is not None and size != info.size:
        return f"size {size} bytes, the hub says {info.size}"
    if info.sha256 or info.git_sha1:
        h = hashlib.sha256() if info.sha256 else hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
        want = info.sha256 or info.git_sha1
        if h.hexdigest() != want:
            return f"{'sha256' if info.sha256 else 'git sha1'} {h.hexdigest()}, the hub says {want}"
    return None


def download_file(url: str, dest: Path, progress: bool = True) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial download, then verify it."""
    from tqdm import tqdm

    info = remote_info(url)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if info.size is not None and have > info.size:
        part.unlink()
        have = 0
    if info.size is None or have < info.size:
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S) as response:
            if have and response.status != 206:
                have = 0  # the server ignored the Range header: start over
            with open(part, "ab" if have else "wb") as out, tqdm(
                total=info.size, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
            ) as bar:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    problem = _verify(part, info)
    if problem:
        part.unlink()
        raise GptlabError(f"{dest}: downloaded file does not match the hub ({problem}); removed it, try again")
    os.replace(part, dest)


def ensure_model(name: str, download: bool = True, progress: bool = True) -> Path:
    """The cache folder of hub model ``name`` with every file of :data:`MODEL_FILES`, downloaded if missing."""
    repo = HUB_MODELS[name]
    directory = model_dir(name)
    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if not missing:
        return directory
    how = (
        f"put {' and '.join(MODEL_FILES)} from {endpoint()}/{repo} into {directory} "
        f"(or pass a folder that holds them)"
    )
    if not download:
        raise GptlabError(f"model {name!r} is not in the cache; {how}")
    for filename in missing:
        try:
            download_file(file_url(repo, filename), directory / filename, progress=progress)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise GptlabError(f"cannot download {filename} of {name!r} from {endpoint()} ({reason}); offline, {how}") from None
    return directory
