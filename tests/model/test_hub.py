"""Model downloads through huggingface_hub, against a local stand-in for the hub (loopback only, no network).

The stand-in answers what ``huggingface_hub.snapshot_download`` (2.x) asks: the model info
(``/api/models/{repo}/revision/{rev}``, for the commit), the file listing
(``/api/models/{repo}/tree/{commit}``), then a HEAD of ``/{repo}/resolve/{commit}/{file}`` per file (small
files: 200 with a git-sha1 ``ETag``; large ones: a redirect to a second server, the "storage host",
carrying ``X-Linked-Etag`` / ``X-Linked-Size``) and the GETs. It advertises no Xet storage (no
``X-Xet-Hash`` header, no ``xetHash`` in the listing), so plain HTTP is used.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when it is imported, so
the tests set the attributes of ``huggingface_hub.constants`` it reads them from; one test runs a fresh
interpreter to check the environment variables themselves.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

# Imported here, not inside a test: huggingface_hub's log handler keeps the sys.stderr it finds when
# its modules load, which would be a test's capture, closed after that test.
from huggingface_hub import constants, hf_hub_download

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model import hub
from gptlab.model.load import load_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".safetensors", ".bin")  # served as the hub serves LFS files: through the storage host


@dataclass
class _State:
    """What both servers serve and what they saw."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the token its files need
    short: set[str] = field(default_factory=set)  # files the storage host sends one byte short
    drop_once: set[str] = field(default_factory=set)  # files whose first GET is cut in the middle
    tree: dict[str, bytes] = field(default_factory=dict)  # what the listing's checksums describe, if not the file
    # (server, method, path, headers with lowercase names) of every request
    requests: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)
    storage: str = ""  # the storage host's address


class _Handler(http.server.BaseHTTPRequestHandler):
    """Base of both servers: records every request, answers with headers and an optional body."""

    role = ""

    def log_message(self, *args) -> None:  # noqa: ANN002 - keep pytest's output clean
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._record()
        self.handle_request(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        self.handle_request(head=False)

    def _record(self) -> None:
        headers = {key.lower(): value for key, value in self.headers.items()}  # httpx sends them lowercase
        self.server.state.requests.append((self.role, self.command, self.path, headers))

    def reply(self, code: int, body: bytes = b"", head: bool = False, **headers: str) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Hub(_Handler):
    role = "hub"

    def handle_request(self, head: bool) -> None:
        state = self.server.state
        path = urlsplit(self.path).path
        route = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)|/([^/]+/[^/]+)/resolve/([^/]+)/(.+)",
                             path)
        repo = route and (route[1] or route[4])
        if repo not in state.repos:  # the hub answers 401 for a repository it does not show
            return self.reply(401, head=head, X_Error_Code="RepoNotFound")
        files = state.repos[repo]
        if route[2] == "revision":
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": name} for name in files]}
            return self.reply(200, json.dumps(info).encode(), head, Content_Type="application/json")
        if route[2] == "tree":
            listing = [_tree_entry(n, state.tree.get(n, d)) for n, d in files.items()]
            return self.reply(200, json.dumps(listing).encode(), head, Content_Type="application/json")
        name = route[6]
        token = state.gated.get(repo)
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            code = 401 if self.headers.get("Authorization") is None else 403
            return self.reply(code, head=head, X_Error_Code="GatedRepo", X_Error_Message="Access restricted")
        if name not in files:
            return self.reply(404, head=head, X_Error_Code="EntryNotFound", X_Repo_Commit=COMMIT)
        data = files[name]
        if name.endswith(LFS_SUFFIXES):
            return self.reply(302, head=head, Location=f"{state.storage}/{repo}/{name}", X_Repo_Commit=COMMIT,
                              X_Linked_Etag=f'"{hashlib.sha256(data).hexdigest()}"', X_Linked_Size=str(len(data)))
        self.reply(200, data, head, ETag=f'"{_git_sha1(data)}"', X_Repo_Commit=COMMIT)


def _tree_entry(name: str, data: bytes) -> dict:
    entry = {"type": "file", "path": name, "size": len(data), "oid": _git_sha1(data)}
    if name.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


class _Storage(_Handler):
    """The storage host large files redirect to: GET with Range, and the faults the tests ask for."""

    role = "storage"

    def handle_request(self, head: bool) -> None:
        state = self.server.state
        repo, name = self.path.lstrip("/").rsplit("/", 1)
        data = state.repos[repo][name]
        if name in state.short:
            return self.reply(200, data[:-1], head)
        start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in state.drop_once:  # half the body, then the connection goes
            state.drop_once.discard(name)
            self.wfile.write(data[start:len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """Both servers, and huggingface_hub pointed at them with its cache in ``tmp_path/hf/hub``."""
    state = _State()
    servers = []
    for handler in (_Hub, _Storage):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.state = state
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    url = f"http://127.0.0.1:{servers[0].server_address[1]}"
    state.storage = f"http://127.0.0.1:{servers[1].server_address[1]}"
    home = tmp_path / "hf"
    # What huggingface_hub read from HF_ENDPOINT, HF_HOME/HF_HUB_CACHE and HF_HUB_OFFLINE at its import.
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))  # no `hf auth login` token of the user's
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "GPTLAB_HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    state.url, state.cache, state.servers = url, home / "hub", servers
    yield state
    for server in servers:
        server.shutdown()
        server.server_close()


def _tiny_gpt2(folder: Path) -> dict[str, bytes]:
    """A tiny GPT-2-format checkpoint (GPT-2's vocabulary, so that load_model pairs it with GPT-2's
    tokenizer) and the repository files that hold it, with weights in formats gptlab must not fetch."""
    torch.manual_seed(0)
    GPT(GPTConfig(vocab_size=50257, context_length=8, emb_dim=8, n_heads=2, n_layers=1, qkv_bias=True,
                  tie_weights=True)).save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    return {**files, "pytorch_model.bin": b"never fetched", "onnx/model.onnx": b"never fetched either"}


def _sharded_qwen3(folder: Path) -> tuple[GPT, dict[str, bytes]]:
    """A tiny Qwen3-format model saved, then split into two shards with an index, as the hub holds large models."""
    from safetensors.torch import load_file, save_file

    from gptlab.model.config import modern

    torch.manual_seed(1)
    model = GPT(modern(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_kv_heads=1, n_layers=2,
                       ff_dim=32, qk_norm=True, tie_weights=True))
    model.save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    files = {"config.json": (folder / "config.json").read_bytes(),
             "model.safetensors.index.json": json.dumps(index).encode(),
             "tokenizer.json": b'{"version": "1.0"}', "tokenizer_config.json": b"{}"}
    files.update({shard: (folder / shard).read_bytes() for shard in set(weight_map.values())})
    return model.eval(), files


def _fetched(state: _State) -> set[str]:
    """The files whose content was downloaded (GETs of /resolve/ and of the storage host)."""
    return {p.rsplit("/", 1)[-1] for role, method, p, _ in state.requests
            if method == "GET" and (role == "storage" or "/resolve/" in p)}


# ------------------------------------------------------------------ downloads, the cache, offline


def test_a_repo_id_loads_like_its_folder_and_then_offline(fake_hub, tmp_path, capfd, monkeypatch):
    files = _tiny_gpt2(tmp_path / "src")
    fake_hub.repos["tiny-org/tiny-gpt2"] = files
    ids = torch.tensor([[464, 3290, 318, 257]])
    with torch.no_grad():
        expected = load_model(tmp_path / "src")[0](ids)
        folder = hub.ensure_model("tiny-org/tiny-gpt2", progress=False)
        assert torch.equal(load_model("tiny-org/tiny-gpt2")[0](ids), expected)
    assert capfd.readouterr().err == ""  # progress=False: no bar
    # The standard hub cache layout, under HF_HUB_CACHE, which transformers reads too.
    assert folder == fake_hub.cache / "models--tiny-org--tiny-gpt2" / "snapshots" / COMMIT
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).read_bytes() == files[name]
    assert _fetched(fake_hub) == {"config.json", "model.safetensors"}  # no .bin, no onnx
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained("tiny-org/tiny-gpt2", local_files_only=True).n_embd == 8
    # In the cache: no request at all, and none needed with the hub gone and HF_HUB_OFFLINE set.
    fake_hub.requests.clear()
    assert hub.ensure_model("tiny-org/tiny-gpt2") == folder
    assert fake_hub.requests == []
    for server in fake_hub.servers:
        server.shutdown()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with torch.no_grad():
        assert torch.equal(load_model("tiny-org/tiny-gpt2")[0](ids), expected)


def test_a_short_name_fetches_a_sharded_checkpoint(fake_hub, tmp_path):
    model, files = _sharded_qwen3(tmp_path / "src")
    fake_hub.repos["Qwen/Qwen3-0.6B"] = files  # HUB_MODELS["qwen3-0.6b"]
    folder = hub.ensure_model("qwen3-0.6b", progress=False)
    assert folder.parent.parent.name == "models--Qwen--Qwen3-0.6B"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # the index and both shards
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    loaded = GPT.from_pretrained("qwen3-0.6b")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_the_variables_are_read_from_the_environment(fake_hub, tmp_path):
    """HF_ENDPOINT, HF_HOME and HF_TOKEN in a fresh interpreter, then HF_HUB_OFFLINE with the hub gone."""
    fake_hub.repos["tiny-org/tiny-gpt2"] = _tiny_gpt2(tmp_path / "src")
    fake_hub.gated["tiny-org/tiny-gpt2"] = "secret"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "GPTLAB_HF"))}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HOME=str(tmp_path / "home"), HF_TOKEN="secret")
    probe = "from gptlab.model.hub import ensure_model; print(ensure_model('tiny-org/tiny-gpt2', progress=False))"
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith(str(tmp_path / "home" / "hub" / "models--tiny-org--tiny-gpt2"))
    for server in fake_hub.servers:
        server.shutdown()
    env.update(HF_HUB_OFFLINE="1", HF_TOKEN="")
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr


def test_a_partial_snapshot_is_completed(fake_hub, tmp_path):
    """transformers may have fetched config.json alone into the snapshot: the weights are still fetched."""
    fake_hub.repos["tiny-org/tiny-gpt2"] = _tiny_gpt2(tmp_path / "src")
    hf_hub_download("tiny-org/tiny-gpt2", "config.json")
    folder = hub.ensure_model("tiny-org/tiny-gpt2")  # with huggingface_hub's progress bars
    assert (folder / "model.safetensors").is_file()


def test_gptlab_hf_endpoint_is_an_alias(fake_hub, tmp_path, monkeypatch):
    fake_hub.repos["tiny-org/tiny-gpt2"] = _tiny_gpt2(tmp_path / "src")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("GPTLAB_HF_ENDPOINT", fake_hub.url)
    assert (hub.ensure_model("tiny-org/tiny-gpt2", progress=False) / "model.safetensors").is_file()


# ------------------------------------------------------------------ resume and checks


def test_a_dropped_connection_resumes_where_it_stopped(fake_hub, tmp_path, monkeypatch):
    """huggingface_hub retries a lost connection from the last whole chunk it wrote (HTTP Range), within
    one download; a download interrupted with its process starts over (its temporary file is removed)."""
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # 10 MB by default: more than this file
    files = _tiny_gpt2(tmp_path / "src")
    fake_hub.repos["tiny-org/tiny-gpt2"] = files
    fake_hub.drop_once.add("model.safetensors")
    folder = hub.ensure_model("tiny-org/tiny-gpt2", progress=False)
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    ranges = [h.get("range") for role, _, _, h in fake_hub.requests if role == "storage"]
    half = len(files["model.safetensors"]) // 2
    assert ranges == [None, f"bytes={half - half % (1 << 16)}-"]


def test_a_file_of_the_wrong_size_is_refused(fake_hub, tmp_path):
    """huggingface_hub checks each download's size against X-Linked-Size (not its sha256)."""
    fake_hub.repos["tiny-org/tiny-gpt2"] = _tiny_gpt2(tmp_path / "src")
    fake_hub.short.add("model.safetensors")
    with pytest.raises(GptlabError) as exc:
        hub.ensure_model("tiny-org/tiny-gpt2", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("cannot download model 'tiny-org/tiny-gpt2'")
    assert "Consistency check failed" in msg
    repo = fake_hub.cache / "models--tiny-org--tiny-gpt2"
    assert not (repo / "snapshots" / COMMIT / "model.safetensors").exists()
    assert not [p for p in (repo / "blobs").iterdir() if len(p.name) == 64]  # no blob under its sha256


def test_a_file_that_does_not_match_its_sha256_is_removed(fake_hub, tmp_path):
    """The right size but other bytes (what huggingface_hub's size check lets through): gptlab's
    check against the hub's sha256 refuses it, removes it, and the next download is clean."""
    fake_hub.repos["tiny-org/tiny-gpt2"] = files = _tiny_gpt2(tmp_path / "src")
    good = files["model.safetensors"]
    files["model.safetensors"] = good[:-1] + bytes([good[-1] ^ 1])  # what the storage host serves
    fake_hub.tree["model.safetensors"] = good  # what the hub's listing announces
    with pytest.raises(GptlabError) as exc:
        hub.ensure_model("tiny-org/tiny-gpt2", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "model.safetensors (sha256)" in msg and "removed" in msg
    snapshot = fake_hub.cache / "models--tiny-org--tiny-gpt2" / "snapshots" / COMMIT
    assert not (snapshot / "model.safetensors").exists() and (snapshot / "config.json").exists()
    files["model.safetensors"] = good
    fake_hub.tree.clear()
    folder = hub.ensure_model("tiny-org/tiny-gpt2", progress=False)
    assert (folder / "model.safetensors").read_bytes() == good


def test_a_repo_without_safetensors_weights_is_one_clear_error(fake_hub, tmp_path):
    files = _tiny_gpt2(tmp_path / "src")
    fake_hub.repos["Qwen/Qwen2.5-0.5B"] = {"config.json": files["config.json"], "pytorch_model.bin": b"x"}
    with pytest.raises(GptlabError, match="has neither model.safetensors nor model.safetensors.index.json"):
        hub.ensure_model("qwen2.5-0.5b", progress=False)
    assert _fetched(fake_hub) == {"config.json"}


# ------------------------------------------------------------------ tokens and refusals: one line each


def test_the_token_goes_to_the_hub_as_a_bearer_and_not_to_storage(fake_hub, tmp_path, monkeypatch):
    fake_hub.repos["meta-llama/Llama-3.2-1B"] = _tiny_gpt2(tmp_path / "src")
    fake_hub.gated["meta-llama/Llama-3.2-1B"] = "secret"
    monkeypatch.setenv("HF_TOKEN", "secret")
    assert (hub.ensure_model("llama-3.2-1b", progress=False) / "model.safetensors").is_file()
    sent = {role: {h.get("authorization") for r, _, _, h in fake_hub.requests if r == role}
            for role in ("hub", "storage")}
    assert sent == {"hub": {"Bearer secret"}, "storage": {None}}


def test_a_gated_model_without_a_token(fake_hub, tmp_path):
    fake_hub.repos["meta-llama/Llama-3.2-1B"] = _tiny_gpt2(tmp_path / "src")
    fake_hub.gated["meta-llama/Llama-3.2-1B"] = "secret"
    with pytest.raises(GptlabError) as exc:
        hub.ensure_model("llama-3.2-1b", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg == (f"model 'llama-3.2-1b' (meta-llama/Llama-3.2-1B) is gated: accept its licence at "
                   f"{fake_hub.url}/meta-llama/Llama-3.2-1B, then set HF_TOKEN to an access token of that account")


def test_a_gated_model_with_a_token_that_has_no_access(fake_hub, tmp_path, monkeypatch):
    fake_hub.repos["meta-llama/Llama-3.2-1B"] = _tiny_gpt2(tmp_path / "src")
    fake_hub.gated["meta-llama/Llama-3.2-1B"] = "secret"
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(GptlabError, match=r"refused the gated model .* accept the model's licence at http://"):
        hub.ensure_model("llama-3.2-1b", progress=False)


def test_a_repository_that_does_not_exist(fake_hub):
    with pytest.raises(GptlabError) as exc:
        load_model("nobody/nothing")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"model 'nobody/nothing': no repository nobody/nothing on the hub ({fake_hub.url}/")


def test_offline_and_not_in_the_cache(fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(GptlabError) as exc:
        load_model("qwen3-0.6b")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"model 'qwen3-0.6b' (Qwen/Qwen3-0.6B) is not in the cache {fake_hub.cache} and "
                          "HF_HUB_OFFLINE is set;")
    assert "HF_HOME" in msg and "HF_HUB_CACHE" in msg
    assert fake_hub.requests == []
    with pytest.raises(GptlabError, match="not in the cache .* and gptlab was asked not to download it"):
        hub.ensure_model("gpt2", download=False)


def test_the_hub_out_of_reach_and_not_in_the_cache(fake_hub, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(GptlabError, match=r"^model 'gpt2' \(openai-community/gpt2\) is not in the cache .* and "
                                          r"the hub \(http://127.0.0.1:9\) cannot be reached;"):
        hub.ensure_model("gpt2", progress=False)


def test_names_that_are_not_hub_models():
    assert hub.hub_repo("gpt2") == "openai-community/gpt2"
    assert hub.hub_repo("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    for name in ("gpt-nano", "./a/b", "/abs/path", "a/b/c", "~/x"):
        assert hub.hub_repo(name) is None
    with pytest.raises(GptlabError, match="nor a repository id owner/name"):
        hub.ensure_model("gpt-nano")
    with pytest.raises(GptlabError, match=r"^model 'bad--owner/x': not a valid hub repository id \("):
        hub.ensure_model("bad--owner/x")  # huggingface_hub's rule: no '--' in an id
