"""The one downloader (gptlab.downloads) against a local HTTP server on 127.0.0.1 (no network)."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from gptlab import downloads
from gptlab.downloads import CachedFile, Expected, cache_dir, cached_file, download_file, mismatch, sha256_file
from gptlab.errors import GptlabError

BODY = bytes(range(256)) * 40  # 10,240 bytes


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` by path; honours ``Range: bytes=N-`` unless ``ignore_range`` (then sends it all)."""

    files: dict[str, bytes] = {}
    ignore_range = False
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        self.requests.append((self.path, self.headers.get("Range")))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and not self.ignore_range:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def server():
    _Server.files = {"/body.bin": BODY}
    _Server.ignore_range = False
    _Server.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Server.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield _Server
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entry(url: str, sha256: str = hashlib.sha256(BODY).hexdigest()) -> CachedFile:
    return CachedFile("body", "sub/body.bin", url, sha256, "a test file")


def test_cache_dir_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("GPTLAB_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "gptlab"


def test_cached_file_downloads_once_into_the_cache(server, cache):
    path = cached_file(entry(server.base + "/body.bin"))
    assert path == cache / "sub" / "body.bin" and path.read_bytes() == BODY
    assert not list(cache.rglob("*.part"))
    assert cached_file(entry(server.base + "/body.bin")) == path
    assert server.requests == [("/body.bin", None)]  # the second time from the cache


def test_checksum_mismatch_names_the_file_and_keeps_nothing(server, cache):
    wrong = "0" * 64
    dest = cache / "sub" / "body.bin"
    with pytest.raises(GptlabError) as exc:
        cached_file(entry(server.base + "/body.bin", sha256=wrong))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{dest}: downloaded file does not match data set 'body' (sha256 {hashlib.sha256(BODY).hexdigest()}, expected {wrong})")
    assert f"put the file at {dest}" in msg and "GPTLAB_DATA_DIR" in msg
    assert not dest.exists() and not downloads.part_path(dest).exists()


def test_a_partial_download_is_resumed(server, cache):
    dest = cache / "sub" / "body.bin"
    dest.parent.mkdir(parents=True)
    downloads.part_path(dest).write_bytes(BODY[:1000])
    assert cached_file(entry(server.base + "/body.bin")).read_bytes() == BODY
    assert server.requests == [("/body.bin", "bytes=1000-")]
    assert not downloads.part_path(dest).exists()


def test_a_server_that_ignores_range_is_read_from_the_start(server, cache):
    server.ignore_range = True
    dest = cache / "body.bin"
    dest.parent.mkdir(parents=True)
    downloads.part_path(dest).write_bytes(b"junk that is not a prefix")
    download_file(server.base + "/body.bin", dest, Expected(len(BODY), sha256=hashlib.sha256(BODY).hexdigest()), source="the server")
    assert dest.read_bytes() == BODY


def test_a_whole_part_file_is_checked_and_renamed(server, cache):
    # The server answers 416 (nothing after the bytes we have): the .part is the whole file.
    dest = cache / "body.bin"
    dest.parent.mkdir(parents=True)
    downloads.part_path(dest).write_bytes(BODY)
    download_file(server.base + "/body.bin", dest, Expected(sha256=hashlib.sha256(BODY).hexdigest()), source="the server")
    assert dest.read_bytes() == BODY and server.requests == [("/body.bin", f"bytes={len(BODY)}-")]


def test_size_and_git_sha1_are_checked():
    blob = b"hello\n"
    git_sha1 = "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"
    assert mismatch(blob, Expected(size=6, git_sha1=git_sha1)) is None
    assert mismatch(blob, Expected(size=7)) == "size 6 bytes, expected 7"
    assert mismatch(blob, Expected(git_sha1="0" * 40)).startswith(f"git sha1 {git_sha1}, expected 000")
    assert mismatch(blob, Expected()) is None


def test_offline_error_is_one_line_saying_where_to_put_the_file(cache):
    dest = cache / "sub" / "body.bin"
    with pytest.raises(GptlabError) as exc:
        cached_file(entry("http://127.0.0.1:9/body.bin"))  # the discard port: connection refused
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"cannot download data set 'body' to {dest} (")
    assert f"put the file at {dest} yourself (from http://127.0.0.1:9/body.bin, sha256 " in msg
    assert msg.endswith("or set GPTLAB_DATA_DIR to a folder holding sub/body.bin")
    assert not cache.exists()  # no folder left behind either
    with pytest.raises(GptlabError, match=rf"data set 'body' is not in the cache; put the file at {dest}"):
        cached_file(entry("http://127.0.0.1:9/body.bin"), download=False)


def test_verification_is_remembered_per_file_version(cache, monkeypatch):
    path = cache / "sub" / "body.bin"
    path.parent.mkdir(parents=True)
    path.write_bytes(BODY)
    cached_file(entry("http://127.0.0.1:9/body.bin"))
    assert sha256_file(path) == hashlib.sha256(BODY).hexdigest()
    hashed = []
    monkeypatch.setattr(downloads, "sha256_file", lambda p: hashed.append(p) or "0" * 64)
    cached_file(entry("http://127.0.0.1:9/body.bin"))
    assert hashed == []  # same size and mtime: not hashed again
    os.utime(path, ns=(0, 0))
    with pytest.raises(GptlabError, match=rf"{path}: sha256 0+ does not match data set 'body'.*delete it"):
        cached_file(entry("http://127.0.0.1:9/body.bin"))  # a changed file is checked again
    assert hashed == [path] and path.exists()  # never deleted: the cache may be shared
