"""Models from the Hugging Face hub, through ``huggingface_hub``.

``ensure_model("qwen3-0.6b")`` (a short name of :data:`HUB_MODELS`) or ``ensure_model("Qwen/Qwen3-0.6B")``
(any repository id) returns the model's snapshot folder in the standard hub cache, the one
``transformers`` uses too: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``
(``models--Qwen--Qwen3-0.6B/snapshots/COMMIT/``). What is missing is downloaded by
:func:`huggingface_hub.snapshot_download`, restricted to the files gptlab reads (:data:`ALLOW_PATTERNS`):
``config.json``, the safetensors weights (``model.safetensors``, or ``model.safetensors.index.json`` and
its shards) and the tokenizer and generation files; never ``.bin``, ``.pth``, ``.h5`` or ONNX weights.

``huggingface_hub`` reads its own settings, so they are not repeated here: ``HF_ENDPOINT`` (a mirror),
``HF_TOKEN`` (or ``hf auth login``; gated models such as Llama need the token of an account that
accepted the licence), ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_PROGRESS_BARS``. Some of them are read when
``huggingface_hub`` is imported (:mod:`huggingface_hub.constants`). It writes each file under a temporary
name, checks its size against the hub's, and retries a dropped connection from where it stopped (HTTP
``Range``). It does not hash what it downloads, so after a download gptlab has it check the snapshot
against the hub's checksums (:meth:`huggingface_hub.HfApi.verify_repo_checksums`: sha256 of large
files, git's blob hash of small ones); a file that does not match is removed from the cache and named
in the error. ``GPTLAB_HF_ENDPOINT``, gptlab's older setting, still works as an alias of ``HF_ENDPOINT``.

A model whose files are all in the cache is returned without any request, so it loads offline; the
cache is not checked for a newer revision (``hf cache rm`` and a new download get one).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

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
# What snapshot_download fetches (fnmatch patterns on the repository's paths): the weights in safetensors
# only, shards under transformers' names; a repository's other formats are gigabytes gptlab never reads.
ALLOW_PATTERNS = [
    CONFIG, WEIGHTS, WEIGHTS_INDEX, "model-*-of-*.safetensors",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "generation_config.json",
]
TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ALIAS_ENV = "GPTLAB_HF_ENDPOINT"
# owner/name as the hub spells repository ids; huggingface_hub checks the finer rules itself.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_repo(name: str) -> str | None:
    """The hub repository ``name`` stands for: a short name's (:data:`HUB_MODELS`), ``name`` itself when it
    reads as ``owner/name``, else None. Callers check for a local folder of that name first."""
    if name in HUB_MODELS:
        return HUB_MODELS[name]
    return name if _REPO_ID.fullmatch(name) else None


def endpoint() -> str:
    """The hub's address: ``$GPTLAB_HF_ENDPOINT`` if set, else huggingface_hub's (``$HF_ENDPOINT`` or
    https://huggingface.co, as read when huggingface_hub was imported)."""
    from huggingface_hub import constants

    return (os.environ.get(ENDPOINT_ALIAS_ENV) or constants.ENDPOINT).rstrip("/")


def hub_cache() -> Path:
    """The hub cache huggingface_hub and transformers share (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def ensure_model(name: str, download: bool = True, progress: bool = True) -> Path:
    """The snapshot folder of hub model ``name`` (a short name or ``owner/name``), downloaded if missing.

    The folder holds ``config.json`` and the safetensors weights, plus the tokenizer and generation files
    the repository has. A complete snapshot in the cache is returned with no request at all; otherwise,
    with ``download``, :func:`huggingface_hub.snapshot_download` fetches what is missing, with its
    progress bars when ``progress``. Every failure (offline, gated, no such repository) is one
    :class:`GptlabError` line.
    """
    repo = hub_repo(name)
    if repo is None:
        raise GptlabError(f"model {name!r}: not a hub name ({', '.join(HUB_MODELS)}) nor a repository id owner/name")
    label = repr(name) if name == repo else f"{name!r} ({repo})"
    from huggingface_hub.errors import HFValidationError

    try:
        folder = _cached_snapshot(repo) or (_download(repo, progress) if download else None)
    except (OSError, HFValidationError, *_client_errors()) as exc:  # OSError: all of huggingface_hub's hub errors
        raise GptlabError(_explain(exc, label, repo)) from None
    if folder is None:
        raise GptlabError(_not_cached(label, "and gptlab was asked not to download it"))
    missing = _missing(folder)
    if WEIGHTS in missing:
        raise GptlabError(f"{repo} has neither {WEIGHTS} nor {WEIGHTS_INDEX} on the hub "
                          "(gptlab downloads safetensors weights only)")
    if missing:
        raise GptlabError(f"{repo}: {', '.join(missing)} not downloaded from the hub; gptlab fetches only "
                          f"{', '.join(ALLOW_PATTERNS)}")
    return folder


def _cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot of ``repo``'s main branch when it holds every file gptlab needs, else None.

    A snapshot can be partial even when huggingface_hub returns it: ``transformers`` may have fetched
    only ``config.json`` into it, and huggingface_hub checks completeness only against a file listing
    it saved itself.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    return folder if not _missing(folder) else None


def _download(repo: str, progress: bool) -> Path:
    """Fetch :data:`ALLOW_PATTERNS` of ``repo``'s main branch into the hub cache; its snapshot folder."""
    from huggingface_hub import snapshot_download

    alias = os.environ.get(ENDPOINT_ALIAS_ENV) or None  # None: huggingface_hub's own HF_ENDPOINT
    folder = Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, endpoint=alias,
                                    tqdm_class=None if progress else _quiet_tqdm()))
    _verify(repo, folder, alias)
    return folder


def _verify(repo: str, folder: Path, endpoint_url: str | None) -> None:
    """Check a fresh snapshot against the hub's checksums; remove and name the files that differ.

    Hashing costs a few seconds per gigabyte, once per download (a model found complete in the cache
    is not hashed again). Files of the repository that gptlab did not fetch are not checked.
    """
    from huggingface_hub import HfApi

    result = HfApi(endpoint=endpoint_url).verify_repo_checksums(repo, revision=folder.name,
                                                                cache_dir=hub_cache())
    if not result.mismatches:
        return
    bad = sorted(m["path"] for m in result.mismatches)
    for path in bad:
        link = folder / path
        blob = link.resolve()
        link.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)  # the cache's copy: the next download fetches it again
    kind = {m["path"]: m["algorithm"] for m in result.mismatches}
    raise GptlabError(f"model {repo}: {', '.join(f'{p} ({kind[p]})' for p in bad)} did not match the hub's "
                      "checksum after download and were removed from the cache; download again")


def _quiet_tqdm() -> type:
    """huggingface_hub's tqdm, always disabled: its bars off for one call, without the global switch."""
    from huggingface_hub.utils import tqdm

    class Quiet(tqdm):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - tqdm's own signature
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _missing(folder: Path) -> list[str]:
    """The files gptlab needs that ``folder`` lacks: ``config.json``, and ``model.safetensors`` or else
    every shard ``model.safetensors.index.json`` names (with neither file, ``model.safetensors`` is listed)."""
    missing = [] if (folder / CONFIG).is_file() else [CONFIG]
    if (folder / WEIGHTS).is_file():
        return missing
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        return [*missing, WEIGHTS]
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise GptlabError(f"{index}: not a valid weight index ({type(exc).__name__}: {exc})") from None
    return missing + [s for s in shards if not isinstance(s, str) or not (folder / s).is_file()]


def _client_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's own errors, which huggingface_hub lets through when a connection stays lost
    through its retries: httpx2's (huggingface_hub 2.x) or httpx's (1.x); requests' (0.x) are OSErrors."""
    import importlib

    errors = []
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except ImportError:
            pass
    return tuple(errors)


def _not_cached(label: str, why: str) -> str:
    """The line for a model missing from the cache that cannot be downloaded now."""
    return (f"model {label} is not in the cache {hub_cache()} {why}; download it online (without "
            "HF_HUB_OFFLINE), or set HF_HOME or HF_HUB_CACHE to a hub cache that holds it")


def _explain(exc: Exception, label: str, repo: str) -> str:
    """One line for a failed hub look-up or download (an error :func:`ensure_model` catches):
    huggingface_hub's own messages run over several lines and speak of its arguments; these say what to do."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    page = f"{endpoint()}/{repo}"
    if isinstance(exc, GatedRepoError):
        if get_token():
            return (f"the hub refused the gated model {label} to the token it was sent ({TOKEN_ENV} or "
                    f"`hf auth login`): accept the model's licence at {page} with that token's account")
        return (f"model {label} is gated: accept its licence at {page}, then set {TOKEN_ENV} to an access "
                "token of that account")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"model {label}: no repository {repo} on the hub ({page}), nor a local folder of that name; "
                f"a private repository needs {TOKEN_ENV}")
    if isinstance(exc, LocalEntryNotFoundError):  # offline, or the hub out of reach, and nothing cached
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the hub ({endpoint()}) cannot be reached"
        return _not_cached(label, f"and {why}")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return f"the hub refused model {label} (HTTP {status} from {page})"
    if isinstance(exc, HFValidationError):
        return f"model {label}: not a valid hub repository id ({_first_line(exc)})"
    # What is left: a size that does not match the hub's, a full disk, a connection lost for good.
    return f"cannot download model {label} from {page} into {hub_cache()} ({_first_line(exc)})"


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (huggingface_hub's run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
