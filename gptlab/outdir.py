"""Output folders that commands create: never written over by surprise, never left half-made.

Every command that writes a folder (``prepare``, ``pretrain``, ``export``, ``classify train``,
``instruct train``) claims it through :class:`OutDir`, which enforces three rules:

* A non-empty folder is only replaced when the user says ``--overwrite``, and then only if it holds what
  that command writes (a run, a prepared corpus, ...): ``--out ~ --overwrite`` must never empty a home.
* Nothing is written into a pretraining run folder's own files (its ``config.json``, ``data/``,
  ``checkpoints/``, ...); a dedicated subfolder such as ``RUN/hf`` is fine.
* A command that fails before its output is complete leaves nothing behind, and a replaced folder comes
  back: the old folder is renamed aside (one atomic rename) and removed only once the new one stands.

Problems are found before any work starts (``OutDir(...)`` checks; :meth:`OutDir.claim` writes), so a
typo in ``--out`` costs a second, not the minutes of data preparation that would come first.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gptlab.errors import GptlabError
from gptlab.io import default_mode

RUN_FORMAT = "gptlab-run"
# What a pretraining run folder holds itself; anything else under it is a user's (e.g. RUN/hf exports).
RUN_OWNED = frozenset({"config.json", "tokenizer.json", "tokenizer_config.json", "data", "checkpoints", "metrics.jsonl", "loss.png",
                       "prompt_style.json", "chat_template.jinja", "adapter"})  # the last three: instruction runs


def is_run_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``gptlab pretrain`` (or a fine-tuning run on its trainer)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return False
    return isinstance(data, dict) and data.get("format") == RUN_FORMAT


def enclosing_run(path: str | os.PathLike) -> Path | None:
    """The run folder that ``path`` is (or lies inside), or None."""
    p = Path(path).expanduser().absolute()
    for candidate in (p, *p.parents):
        if is_run_dir(candidate):
            return candidate
    return None


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


class OutDir:
    """A folder one command is about to write, checked on construction and written under :meth:`claim`.

    ``kind`` names what the command writes ("pretraining run", "prepared data folder", ...) and
    ``is_same_kind`` recognises it, so ``--overwrite`` replaces only a folder of that kind (or an empty
    one). ``hint`` is appended to the "not empty" error (e.g. how to resume). ``staged`` writes into a
    hidden sibling folder that is renamed into place at the end, so the real name never shows a partial
    result; without it the folder is written in place (long runs whose partial output is worth keeping)
    and :meth:`commit` marks the point from which a failure keeps what was written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        flag: str = "--out",
        overwrite: bool = False,
        kind: str = "output folder",
        is_same_kind: Callable[[Path], bool] | None = None,
        hint: str = "",
        staged: bool = False,
        allow_in_run: bool = True,
    ) -> None:
        self.path = Path(path).expanduser()
        self.flag = flag
        self.overwrite = overwrite
        self.kind = kind
        self.staged = staged
        self._committed = False
        self._trash: Path | None = None
        self._created = False
        self._check(is_same_kind, hint, allow_in_run)

    # ------------------------------------------------------------------ checks (no side effects)
    def _err(self, what: str) -> GptlabError:
        return GptlabError(f"{self.flag} {self.path}: {what}")

    def _check(self, is_same_kind: Callable[[Path], bool] | None, hint: str, allow_in_run: bool) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise self._err("exists and is not a folder")
        run = enclosing_run(path)
        if run is not None:
            here = path.absolute()
            if here == run and self.kind != "pretraining run":
                raise self._err(f"is a pretraining run folder; write to a new folder such as {path / 'hf'}")
            if here != run:
                top = here.relative_to(run).parts[0]
                if not allow_in_run or top in RUN_OWNED or top.startswith("."):
                    raise self._err(f"lies inside the run folder {run}, among its own files; "
                                    f"use a dedicated subfolder such as {run / 'hf'} or another folder")
        if path.is_dir() and not _is_empty_dir(path):
            if not self.overwrite:
                raise self._err(f"folder exists and is not empty{hint}; choose another folder, "
                                f"or pass --overwrite to replace it")
            if is_same_kind is not None and not is_same_kind(path):
                raise self._err(f"holds files that are not a {self.kind}; refusing to replace it, "
                                f"even with --overwrite (remove it yourself or choose another folder)")
            if Path.cwd().absolute().is_relative_to(path.absolute()):
                raise self._err("is the current folder or contains it; refusing to replace it")
        self._probe_writable()

    def _probe_writable(self) -> None:
        """Fail now, with one line, where creating the folder would fail later."""
        problem = creation_problem(self.path)
        if problem is not None:
            raise self._err(f"cannot create a folder there: {problem}")

    # ------------------------------------------------------------------ writing
    @contextmanager
    def claim(self) -> Iterator[Path]:
        """Yield the folder to write into; on success it stands at ``path``, on failure nothing changed.

        Without ``staged``, a failure after :meth:`commit` keeps what was written (a started run).
        """
        work = self._open()
        try:
            yield work
        except BaseException:
            if not self._committed:
                self._rollback(work)
            raise
        self.commit()

    def _open(self) -> Path:
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.staged:
                work = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
                os.chmod(work, default_mode(folder=True))  # mkdtemp makes it 0700
                return work
            if path.is_dir() and not _is_empty_dir(path):  # --overwrite: set the old folder aside
                self._trash = self._aside()
            self._created = not path.exists()
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise self._err(f"cannot create it ({_os_reason(exc)})") from None
        return path

    def _aside(self) -> Path:
        trash = self.path.parent / f".{self.path.name}.replaced-{os.getpid()}"
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(self.path, trash)
        return trash

    def commit(self) -> None:
        """The new folder is complete (or a run has started): publish it and drop the replaced one."""
        if self._committed:
            return
        self._committed = True
        if self.staged:
            return  # published by _publish at the end of claim(); see below
        if self._trash is not None:
            shutil.rmtree(self._trash, ignore_errors=True)
            self._trash = None

    def _rollback(self, work: Path) -> None:
        if self.staged:
            shutil.rmtree(work, ignore_errors=True)
            return
        if self._created or self._trash is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.is_dir():  # it existed, empty: leave it empty again
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if self._trash is not None:
            os.replace(self._trash, self.path)
            self._trash = None


class StagedOutDir(OutDir):
    """An :class:`OutDir` written under a hidden name and renamed into place whole when done."""

    def __init__(self, path: str | os.PathLike, **kwargs) -> None:
        super().__init__(path, staged=True, **kwargs)

    @contextmanager
    def claim(self) -> Iterator[Path]:
        """Yield a hidden sibling folder; on success it replaces ``path`` in one rename."""
        work = self._open()
        try:
            yield work
        except BaseException:
            self._rollback(work)
            raise
        try:
            if self.path.exists():
                self._trash = self._aside()
            os.replace(work, self.path)
        except OSError as exc:
            self._rollback(work)
            if self._trash is not None:
                os.replace(self._trash, self.path)
            raise self._err(f"cannot move the finished folder into place ({_os_reason(exc)})") from None
        if self._trash is not None:
            shutil.rmtree(self._trash, ignore_errors=True)
            self._trash = None
        self._committed = True


def creation_problem(path: Path) -> str | None:
    """Why ``path`` (a folder, or a file's folder) could not be created under its nearest existing parent;
    None when it could. Probed by creating a temporary folder there, so that a command fails at once rather
    than after hours of work."""
    anchor = Path(path).absolute()
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        return f"{anchor} is a file"
    try:
        probe = tempfile.mkdtemp(prefix=".gptlab-probe-", dir=anchor)
    except OSError as exc:
        return f"{anchor} does not allow it ({_os_reason(exc)})"
    os.rmdir(probe)
    return None

