"""Hub downloads against a local stand-in for the hub (loopback only, no network)."""

from __future__ import annotations

import hashlib
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
        self._meta(Path(self.path).name)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, self.headers.get("Range")))
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
