"""Download models from the Hugging Face hub with nothing but ``urllib``.

``ensure_model("qwen3-0.6b")`` returns ``cache_dir()/hf/qwen3-0.6b`` holding ``config.json`` and the
weights, downloading what is missing. The weights are ``model.safetensors``, or, for a repository that
splits them (Llama 3.2 3B, Qwen3 4B), ``model.safetensors.index.json`` and every shard it names. The
tokenizer and generation files (``tokenizer.json``, ``tokenizer_config.json``,
``generation_config.json``) come along when the repository has them.

The hub part is here: its addresses, its access token, and reading the size and hash it announces
(``X-Linked-Size`` / ``X-Linked-Etag``, the sha256 of large files; for small files the ``ETag`` is
git's blob sha1). The download itself is :func:`gptlab.downloads.download_file`: to ``FILE.part``,
resumed where it stopped (HTTP ``Range``), checked before it gets its real name.
``GPTLAB_HF_ENDPOINT`` overrides the hub address (a mirror, or the tests' local server). ``HF_TOKEN``,
when set, is sent to the hub (never to the storage host it redirects to): gated models (Llama) need
it, from an account that has accepted the model's licence.
"""

from __future__ import annotations

import json
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
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
    # Gated: the hub serves them only with HF_TOKEN of an account that accepted Meta's licence.
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
}
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MODEL_FILES = (CONFIG, WEIGHTS)  # what a single-file model needs
# Fetched when the repository has them (a 404 is fine): what a tokenizer and generation defaults need.
OPTIONAL_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
TOKEN_ENV = "HF_TOKEN"
_TIMEOUT_S = 30
# A shard name from an index, kept to a plain file name: the index comes from the network and must not
# name a path outside the model's folder.
_SHARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors")


def endpoint() -> str:
    """The hub's base address (``$GPTLAB_HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("GPTLAB_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def model_dir(name: str) -> Path:
    """Where hub model ``name`` lives in the cache."""
    return cache_dir() / "hf" / name


def file_url(repo: str, filename: str) -> str:
    """The hub's download address for one file of a repository's main branch."""
    return f"{endpoint()}/{repo}/resolve/main/{filename}"


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $HF_TOKEN`` when the token is set, else nothing."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


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
    for key, value in auth_headers().items():
        request.add_unredirected_header(key, value)
    try:
        response = opener.open(request, timeout=_TIMEOUT_S)
        return response.headers, None
    except urllib.error.HTTPError as exc:
        if exc.code not in (301, 302, 303, 307, 308):
            raise
        return exc.headers, exc.headers.get("Location")


def resolve(url: str) -> tuple[Expected, str]:
    """Size and hashes of the file at ``url`` from the hub's headers, and the hub address to GET it from.

    A large (LFS) file answers with a redirect to a storage host that carries ``X-Linked-Size`` and
    ``X-Linked-Etag``; that first response is the one to read, and the download starts at the hub
    (which signs the storage address). A redirect within the hub (a renamed repository, a cache path) is
    followed, as ``huggingface_hub`` does, and the download starts where it leads, so that the token
    goes along only to the hub.
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
        return Expected(size, sha256=linked), url
    if etag and re.fullmatch(r"[0-9a-f]{64}", etag):
        return Expected(size, sha256=etag), url
    if etag and re.fullmatch(r"[0-9a-f]{40}", etag):
        return Expected(size, git_sha1=etag), url
    return Expected(size), url


def remote_info(url: str) -> Expected:
    """Size and hashes of the file at ``url``, from the hub's response headers (see :func:`resolve`)."""
    return resolve(url)[0]


def _shards(index_path: Path) -> list[str]:
    """The shard files a downloaded ``model.safetensors.index.json`` names, checked to be plain file names."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise GptlabError(f"{index_path}: not a valid weight index ({type(exc).__name__}: {exc})") from None
    for shard in shards:
        if not isinstance(shard, str) or not _SHARD_NAME.fullmatch(shard):
            raise GptlabError(f"{index_path}: shard name {shard!r} is not a plain .safetensors file name")
    if not shards:
        raise GptlabError(f"{index_path}: the weight index names no shard")
    return shards


def _missing_weights(directory: Path) -> list[str] | None:
    """Weight files still to download (``[]``: complete), or None when neither layout is started."""
    if (directory / WEIGHTS).is_file():
        return []
    if (directory / WEIGHTS_INDEX).is_file():
        return [s for s in _shards(directory / WEIGHTS_INDEX) if not (directory / s).is_file()]
    return None


class _Fetcher:
    """Downloads the files of one repository into one folder, turning the hub's refusals into errors."""

    def __init__(self, repo: str, directory: Path, progress: bool) -> None:
        self.repo, self.directory, self.progress = repo, directory, progress

    def fetch(self, filename: str, optional: bool = False) -> bool:
        """Download ``filename`` into the folder; False if it is ``optional`` and the repository lacks it."""
        try:
            expected, url = resolve(file_url(self.repo, filename))
            download_file(url, self.directory / filename, expected, source="the hub",
                          progress=self.progress, headers=auth_headers())
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and optional:
                return False
            if exc.code in (401, 403):
                raise GptlabError(self._refused(filename, exc.code)) from None
            if exc.code == 404:
                raise GptlabError(f"{self.repo} has no {filename} on the hub ({endpoint()}/{self.repo}; HTTP 404)") from None
            raise
        return True

    def _refused(self, filename: str, code: int) -> str:
        page = f"{endpoint()}/{self.repo}"
        if auth_headers():
            return (f"the hub refused {filename} of {self.repo} (HTTP {code}) with the token in {TOKEN_ENV}: "
                    f"accept the model's licence at {page} with that token's account, or check the token")
        return (f"the hub refused {filename} of {self.repo} (HTTP {code}): the model is gated; accept its "
                f"licence at {page}, then set {TOKEN_ENV} to an access token of that account")


def ensure_model(name: str, download: bool = True, progress: bool = True) -> Path:
    """The cache folder of hub model ``name`` with its config and weights, downloaded if missing.

    The optional files (:data:`OPTIONAL_FILES`) are fetched in the same pass, before the weights, so a
    folder whose weights are complete has had them tried; a complete folder costs no request at all.
    """
    repo = HUB_MODELS[name]
    directory = model_dir(name)
    missing = _missing_weights(directory)
    if (directory / CONFIG).is_file() and missing == []:
        return directory
    how = put_by_hand(f"{' and '.join(MODEL_FILES)} (or {WEIGHTS_INDEX} and its shards) into {directory}",
                      f"{endpoint()}/{repo}", f"hf/{name}/")
    how += " (or pass a folder that holds them)"
    if not download:
        raise GptlabError(f"model {name!r} is not in the cache; {how}")
    fetcher = _Fetcher(repo, directory, progress)
    with offline_errors(f"the files of {name!r}", f"from {endpoint()}", f"offline, {how}"):
        if not (directory / CONFIG).is_file():
            fetcher.fetch(CONFIG)
        for filename in OPTIONAL_FILES:
            if not (directory / filename).is_file():
                fetcher.fetch(filename, optional=True)
        if missing is None:
            # One file, or (a 404 for it) an index naming the shards.
            if fetcher.fetch(WEIGHTS, optional=True):
                return directory
            if not fetcher.fetch(WEIGHTS_INDEX, optional=True):
                raise GptlabError(f"{repo} has neither {WEIGHTS} nor {WEIGHTS_INDEX} on the hub "
                                  "(gptlab downloads safetensors weights only)")
            missing = _missing_weights(directory) or []
        for shard in missing:
            fetcher.fetch(shard)
    return directory
