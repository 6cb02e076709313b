"""Hub downloads against a local stand-in for the hub (loopback only, no network)."""

from __future__ import annotations

import hashlib
import json
import http.server
import threading
from pathlib import Path

import pytest
import torch

from gptlab.errors import GptlabError
from gptlab.model import GPT, GPTConfig
from gptlab.model import hub


class _Hub(http.server.BaseHTTPRequestHandler):
    """Serves /{repo}/resolve/main/{file} like the hub: small files through a redirect within the hub
    (to /api/resolve-cache/...) then with a git-sha1 ETag; large ones through a redirect to a storage
    path that carries X-Linked-Size / X-Linked-Etag (sha256); Range requests honoured."""

    files: dict[str, bytes] = {}
    bad_sha: str | None = None  # a file whose announced hash is wrong
    requests: list[tuple[str, str, str | None]] = []
    token: str | None = None  # a gated repository: the hub's own paths want "Bearer {token}"
    auth: list[tuple[str, str | None]] = []  # (path, Authorization header) of every request

    def _refused(self) -> bool:
        """Answer 404 for a file the repository lacks, 401/403 for a gated one without the right token."""
        self.auth.append((self.path, self.headers.get("Authorization")))
        if self.token and not self.path.startswith("/cdn/"):
            sent = self.headers.get("Authorization")
            if sent != f"Bearer {self.token}":
                self.send_response(401 if sent is None else 403)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
        if Path(self.path).name not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _meta(self, name: str) -> None:
        data = self.files[name]
        if name.endswith(".safetensors"):
            sha = hashlib.sha256(data + (b"x" if self.bad_sha == name else b"")).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"/cdn/{name}")
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("Content-Length", "0")
        elif "/resolve/" in self.path:
            self.send_response(307)
            self.send_header("Location", f"/api/resolve-cache/models/x/abc/{name}")
            self.send_header("Content-Length", "0")
        else:
            self.send_response(200)
            blob = data + (b"x" if self.bad_sha == name else b"")
            self.send_header("ETag", '"%s"' % hashlib.sha1(b"blob %d\0" % len(data) + blob).hexdigest())
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self.requests.append(("HEAD", self.path, None))
        if not self._refused():
            self._meta(Path(self.path).name)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, self.headers.get("Range")))
        if self._refused():
            return
        name = Path(self.path).name
        if "/resolve/main/" in self.path:
            return self._meta(name)  # the redirects
        data = self.files[name]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = tmp_path / "src"
    GPT(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1, qkv_bias=True, tie_weights=True)).save_pretrained(src)
    _Hub.files = {f: (src / f).read_bytes() for f in hub.MODEL_FILES}
    _Hub.bad_sha = None
    _Hub.requests = []
    _Hub.token = None
    _Hub.auth = []
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GPTLAB_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path / "cache"))
    yield _Hub
    server.shutdown()


def test_download_verify_and_load(fake_hub, tmp_path):
    model = GPT.from_pretrained("gpt2")
    folder = tmp_path / "cache" / "hf" / "gpt2"
    for name, data in fake_hub.files.items():
        assert (folder / name).read_bytes() == data
    assert not list(folder.glob("*.part"))
    assert model.cfg.emb_dim == 16
    assert any(p == "/openai-community/gpt2/resolve/main/model.safetensors" for _, p, _ in fake_hub.requests)
    assert ("HEAD", "/api/resolve-cache/models/x/abc/config.json", None) in fake_hub.requests  # followed
    # Second time: from the cache, no request at all.
    fake_hub.requests.clear()
    GPT.from_pretrained("gpt2")
    assert fake_hub.requests == []


def test_resumes_a_partial_download(fake_hub, tmp_path):
    folder = tmp_path / "cache" / "hf" / "gpt2"
    folder.mkdir(parents=True)
    data = fake_hub.files["model.safetensors"]
    (folder / "model.safetensors.part").write_bytes(data[:1000])
    hub.ensure_model("gpt2", progress=False)
    assert (folder / "model.safetensors").read_bytes() == data
    assert ("GET", "/cdn/model.safetensors", "bytes=1000-") in fake_hub.requests


@pytest.mark.parametrize("bad,hash_name", [("model.safetensors", "sha256"), ("config.json", "git sha1")])
def test_checksum_mismatch_is_rejected(fake_hub, tmp_path, bad, hash_name):
    fake_hub.bad_sha = bad
    with pytest.raises(GptlabError, match=f"{bad}: downloaded file does not match the hub \\({hash_name}"):
        hub.ensure_model("gpt2", progress=False)
    folder = tmp_path / "cache" / "hf" / "gpt2"
    assert not (folder / bad).exists() and not (folder / f"{bad}.part").exists()


def test_offline_error_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(GptlabError) as exc:
        GPT.from_pretrained("gpt2-medium")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "config.json and model.safetensors" in msg and str(tmp_path / "hf" / "gpt2-medium") in msg
    with pytest.raises(GptlabError, match="not in the cache"):
        hub.ensure_model("gpt2", download=False)


# ------------------------------------------------------------------ sharded repos, optional files, gated models


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


def test_sharded_repo_downloads_the_index_and_every_shard(fake_hub, tmp_path):
    model, files = _sharded_qwen3(tmp_path / "src")
    fake_hub.files = files
    loaded = GPT.from_pretrained("qwen3-0.6b")
    folder = tmp_path / "cache" / "hf" / "qwen3-0.6b"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # no .part left, nothing else
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert ("HEAD", "/Qwen/Qwen3-0.6B/resolve/main/model.safetensors", None) in fake_hub.requests  # tried first
    assert not any(p.endswith("generation_config.json") and m == "GET" for m, p, _ in fake_hub.requests)  # 404: skipped
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    fake_hub.requests.clear()
    hub.ensure_model("qwen3-0.6b", progress=False)
    assert fake_hub.requests == []  # complete: no request at all


def test_an_interrupted_sharded_download_fetches_only_the_missing_shards(fake_hub, tmp_path):
    _, files = _sharded_qwen3(tmp_path / "src")
    fake_hub.files = files
    folder = tmp_path / "cache" / "hf" / "qwen3-0.6b"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"):
        (folder / name).write_bytes(files[name])
    hub.ensure_model("qwen3-0.6b", progress=False)
    fetched = {Path(p).name for m, p, _ in fake_hub.requests if m == "GET" and p.startswith("/cdn/")}
    assert fetched == {"model-00002-of-00002.safetensors"}
    assert (folder / "model-00002-of-00002.safetensors").read_bytes() == files["model-00002-of-00002.safetensors"]


def test_optional_files_come_along_with_a_single_file_model(fake_hub, tmp_path):
    fake_hub.files = {**fake_hub.files, "generation_config.json": b'{"eos_token_id": 0}'}
    folder = hub.ensure_model("smollm2-135m", progress=False)
    assert (folder / "generation_config.json").read_bytes() == b'{"eos_token_id": 0}'
    assert not (folder / "tokenizer.json").exists() and not (folder / "model.safetensors.index.json").exists()


def test_an_index_naming_a_path_outside_the_folder_is_refused(fake_hub, tmp_path):
    _, files = _sharded_qwen3(tmp_path / "src")
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {"a": "../../evil.safetensors"}}).encode()
    fake_hub.files = files
    with pytest.raises(GptlabError, match="shard name '../../evil.safetensors' is not a plain .safetensors file name"):
        hub.ensure_model("qwen3-0.6b", progress=False)
    assert not (tmp_path / "cache" / "evil.safetensors").exists()


def test_a_repo_without_safetensors_weights_is_one_clear_error(fake_hub):
    fake_hub.files = {"config.json": fake_hub.files["config.json"]}
    with pytest.raises(GptlabError, match="has neither model.safetensors nor model.safetensors.index.json"):
        hub.ensure_model("qwen2.5-0.5b", progress=False)


def test_gated_model_without_a_token_says_how_to_get_access(fake_hub):
    fake_hub.token = "secret"
    with pytest.raises(GptlabError) as exc:
        hub.ensure_model("llama-3.2-1b", progress=False)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "config.json of meta-llama/Llama-3.2-1B (HTTP 401)" in msg
    assert "accept its licence at http://127.0.0.1:" in msg and "/meta-llama/Llama-3.2-1B" in msg
    assert "set HF_TOKEN" in msg


def test_gated_model_with_a_wrong_token(fake_hub, monkeypatch):
    fake_hub.token = "secret"
    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(GptlabError, match=r"\(HTTP 403\) with the token in HF_TOKEN: accept the model's licence"):
        hub.ensure_model("llama-3.2-1b", progress=False)


def test_gated_model_with_a_token_sends_it_to_the_hub_only(fake_hub, tmp_path, monkeypatch):
    fake_hub.token = "secret"
    monkeypatch.setenv("HF_TOKEN", "secret")
    folder = hub.ensure_model("llama-3.2-1b", progress=False)
    assert (folder / "model.safetensors").read_bytes() == fake_hub.files["model.safetensors"]
    hub_paths = [(p, a) for p, a in fake_hub.auth if not p.startswith("/cdn/")]
    assert hub_paths and all(a == "Bearer secret" for _, a in hub_paths)
    storage = [(p, a) for p, a in fake_hub.auth if p.startswith("/cdn/")]
    assert storage and all(a is None for _, a in storage)  # never forwarded to the storage host
