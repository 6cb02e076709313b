"""Output folders: refused when not empty, replaced whole with --overwrite, never left half-made."""

from __future__ import annotations

import json
import os
import stat

import pytest

from gptlab.errors import GptlabError
from gptlab.io import atomic_write_text, default_mode
from gptlab.outdir import OutDir, StagedOutDir, enclosing_run


def _run_folder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"format": "gptlab-run"}))
    (path / "checkpoints").mkdir()
    return path


def _has_marker(p):
    return (p / "marker").is_file()


def test_new_folder_is_created_and_kept(tmp_path):
    out = OutDir(tmp_path / "a" / "b")
    with out.claim() as work:
        (work / "x").write_text("1")
    assert (tmp_path / "a" / "b" / "x").read_text() == "1"


def test_non_empty_folder_is_refused_without_overwrite(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(GptlabError, match=r"--out .*old: folder exists and is not empty.*--overwrite"):
        OutDir(tmp_path / "old")
    assert (tmp_path / "old" / "keep.txt").read_text() == "mine"
    OutDir(tmp_path / "empty")  # an empty or missing folder is fine
    (tmp_path / "empty2").mkdir()
    OutDir(tmp_path / "empty2")


def test_overwrite_only_replaces_a_folder_of_the_same_kind(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(GptlabError, match="not a prepared data; refusing to replace it"):
        OutDir(tmp_path / "home", overwrite=True, kind="prepared data", is_same_kind=_has_marker)
    assert (tmp_path / "home" / "thesis.tex").exists()


@pytest.mark.parametrize("cls", [OutDir, StagedOutDir])
def test_overwrite_replaces_whole_and_failure_restores_the_old_folder(tmp_path, cls):
    old = tmp_path / "out"
    old.mkdir()
    (old / "marker").write_text("old")
    (old / "stale.bin").write_text("old")
    out = cls(old, overwrite=True, is_same_kind=_has_marker)
    with pytest.raises(RuntimeError):
        with out.claim() as work:
            (work / "marker").write_text("new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in old.iterdir()) == ["marker", "stale.bin"]
    assert (old / "marker").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial or set-aside folder left

    out = cls(old, overwrite=True, is_same_kind=_has_marker)
    with out.claim() as work:
        (work / "marker").write_text("new")
    assert sorted(p.name for p in old.iterdir()) == ["marker"]  # replaced whole: no stale file
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_folder_is_invisible_until_done(tmp_path):
    out = StagedOutDir(tmp_path / "final")
    with out.claim() as work:
        (work / "f").write_text("x")
        assert not (tmp_path / "final").exists()
    assert (tmp_path / "final" / "f").is_file()
    mode = stat.S_IMODE(os.stat(tmp_path / "final").st_mode)
    assert mode == default_mode(folder=True)


def test_failure_leaves_no_empty_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with OutDir(tmp_path / "runs" / "r1").claim():
            raise KeyboardInterrupt
    assert not (tmp_path / "runs" / "r1").exists()


def test_commit_keeps_a_started_run_after_a_failure(tmp_path):
    out = OutDir(tmp_path / "r")
    with pytest.raises(RuntimeError):
        with out.claim() as work:
            (work / "checkpoint").write_text("step 100")
            out.commit()
            raise RuntimeError("NaN at step 101")
    assert (tmp_path / "r" / "checkpoint").is_file()


def test_run_folder_and_its_own_files_are_refused(tmp_path):
    run = _run_folder(tmp_path / "run")
    with pytest.raises(GptlabError, match="is a pretraining run folder"):
        OutDir(run, overwrite=True)
    for inside in ("checkpoints", "data", "checkpoints/best", "config.json/x"):
        with pytest.raises(GptlabError, match="inside the run folder"):
            OutDir(run / inside, overwrite=True)
    OutDir(run / "hf")  # a dedicated subfolder is fine
    assert enclosing_run(run / "hf" / "deeper") == run.absolute()
    OutDir(run, overwrite=True, kind="pretraining run")  # pretrain --overwrite may replace a run


def test_unwritable_places_are_one_line_errors(tmp_path):
    with pytest.raises(GptlabError, match=r"--out /proc/x: cannot create a folder there"):
        OutDir("/proc/x")
    (tmp_path / "file").write_text("")
    with pytest.raises(GptlabError, match="exists and is not a folder"):
        OutDir(tmp_path / "file")
    with pytest.raises(GptlabError, match="is a file"):
        OutDir(tmp_path / "file" / "sub")


def test_current_folder_is_never_replaced(tmp_path, monkeypatch):
    (tmp_path / "marker").write_text("")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GptlabError, match="current folder"):
        OutDir(".", overwrite=True, is_same_kind=_has_marker)


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        import gptlab.io

        gptlab.io._UMASK = None  # read again under this test's mask
        atomic_write_text(tmp_path / "f.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "f.json").st_mode) == 0o640
    finally:
        os.umask(old)
        gptlab.io._UMASK = None
