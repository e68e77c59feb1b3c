"""A local Oxen repository through Oxen's Python package (`oxenai`, imported as `oxen`, the
optional extra `pipeline[oxen]`): the one seam between the pipeline and that package.

    a file -> the folder above it holding .oxen -> LocalRepo
    on_branch(name, files)  the branch checked out (made from the current one when missing),
                            the current branch again afterwards, `files` on disk as before
    stage(file) -> changed? commit(message) -> the commit id

oxen's errors (ValueError from its Rust core) become `OutputError` here, saying what to do.
Its Rust core prints progress lines to the process's stdout, which carries the CLI's JSON
summary: they are caught at the file descriptor and logged at debug level instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OutputError

log = logging.getLogger(__name__)

USER_CONFIG = "user_config.toml"  # oxen's [user] name and email, in its config folder
INSTALL = "pip install 'pipeline[oxen]' (Oxen's Python package, oxenai)"
STATUS_TIMEOUT_S = 120  # the child process that reads the staged files before a run
_STAGED = """\
import json, sys
import oxen
status = oxen.Repo(sys.argv[1]).status()
staged = [*status.added_files(), *status.modified_files(), *status.removed_files()]
print()
print(json.dumps(staged))
"""


def oxen_module() -> Any:
    """`import oxen`, or an error saying how to install it."""
    try:
        import oxen
    except ImportError as exc:
        raise OutputError(f"output.commit needs Oxen's Python package: {INSTALL}") from exc
    return oxen


def find_root(path: Path) -> Path | None:
    """The folder holding `.oxen` at or above the file's folder, if any."""
    for folder in path.resolve().parents:
        if (folder / ".oxen").is_dir():
            return folder
    return None


def root_of(path: Path) -> Path:
    """The repository folder holding `path`; none is an OutputError saying what to do."""
    root = find_root(path)
    if root is None:
        raise OutputError(
            f"output.commit: {path} is not inside an Oxen repository (no .oxen folder in "
            f"{path.parent} or above it): run `oxen init` in the folder that should hold "
            "it, or drop output.commit"
        )
    return root


def check_user() -> None:
    """oxen commits need a user name and email in its config folder."""
    config = Path(oxen_module().util.get_oxen_config_dir()) / USER_CONFIG
    if not config.is_file():
        raise OutputError(_no_user(config))


def _no_user(config: Path | None) -> str:
    where = f" (it writes {config})" if config else ""
    return (
        "output.commit: Oxen has no user name and email to commit with: run `oxen config "
        "--name NAME --email EMAIL`, or in Python `oxen.user.config_user(NAME, EMAIL)`" + where
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """What oxen's Rust core prints to stdout (fd 1) goes to the debug log instead."""
    sys.stdout.flush()
    with tempfile.TemporaryFile() as caught:
        saved = os.dup(1)
        os.dup2(caught.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    log.debug("oxen: %s", line.strip())


@contextlib.contextmanager
def _oxen(doing: str) -> Iterator[None]:
    """Call oxen quietly; its errors become an OutputError naming what was being done."""
    with _quiet():
        try:
            yield
        except (ValueError, OSError) as exc:
            raise _translated(doing, str(exc)) from exc


def _translated(doing: str, said: str) -> OutputError:
    """What oxen said when `doing` failed, as an OutputError saying what to do."""
    said = " ".join(said.split())
    if "oxen not configured" in said:
        return OutputError(_no_user(None))
    if "LOCK" in said and "temporarily unavailable" in said:
        return OutputError(
            f"cannot {doing}: another process has the Oxen repository open (oxen "
            "keeps it locked until that process ends: a Python session that used "
            "oxen, an oxen command, another run); end it and run again"
        )
    return OutputError(f"cannot {doing}: {said}")


def staged_elsewhere(root: Path, ours: list[Path]) -> list[str]:
    """The files staged in the repository at `root`, other than `ours`, read by a child
    process: oxen keeps a repository locked from every other process for as long as the
    process that opened it lives, so this one opens it only to commit, after the run."""
    oxen_module()  # a missing install is said here, not as the child's traceback
    doing = f"read the status of the Oxen repository {root} (output.commit)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STAGED, str(root)],
            capture_output=True,
            text=True,
            timeout=STATUS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OutputError(
            f"cannot {doing}: no answer in {STATUS_TIMEOUT_S} s; run `oxen status` there to see why"
        ) from None
    except OSError as exc:
        raise OutputError(f"cannot {doing}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise _translated(doing, lines[-1] if lines else f"exit status {done.returncode}")
    try:
        staged = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise OutputError(f"cannot {doing}: oxen gave no list of staged files") from None
    mine = {path.resolve().relative_to(root.resolve()).as_posix() for path in ours}
    return [str(name) for name in staged if Path(name).as_posix() not in mine]


def staged_refusal(root: Path, others: list[str]) -> OutputError:
    """The error for staged changes that are not the output's."""
    return OutputError(
        f"output.commit: the Oxen repository {root} has staged changes "
        f"({', '.join(others[:5])}), which the output's commit would take along: "
        "commit or unstage them first"
    )


def write_file(path: Path, data: bytes) -> None:
    """Write `data` whole or not at all (temp file + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class LocalRepo:
    """A local Oxen repository: its working folder, branches, staging and commits."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        oxen = oxen_module()
        with _oxen(f"open the Oxen repository {root}"):
            self._repo = oxen.Repo(str(self.root))

    @classmethod
    def holding(cls, path: Path) -> LocalRepo:
        """The repository whose working folder holds `path`; none is an OutputError."""
        return cls(root_of(path))

    def relative(self, path: Path) -> str:
        """`path` inside the working folder, as oxen names it (a/b.csv)."""
        return path.resolve().relative_to(self.root).as_posix()

    @property
    def branch(self) -> str | None:
        """The current branch; None before the first commit."""
        with _oxen("read the current branch"):
            current = self._repo.current_branch
        return None if current is None else str(current.name)

    def head(self, branch: str) -> str | None:
        """The commit the branch points at."""
        with _oxen("list the branches"):
            found = [str(b.commit_id) for b in self._repo.branches() if b.name == branch]
        return found[0] if found else None

    def staged(self) -> list[str]:
        """Files added, modified or removed in the staging area."""
        with _oxen("read the repository's status"):
            status = self._repo.status()
            return [
                *status.added_files(),
                *status.modified_files(),
                *status.removed_files(),
            ]

    def committed(self, path: Path) -> bool:
        """The file is in the current branch's head, unchanged on disk and in staging."""
        name = self.relative(path)
        with _oxen("read the repository's status"):
            status = self._repo.status()
            changed = {*status.unstaged_modified_files(), *status.unstaged_removed_files()}
            untracked = self._repo.clean([name], False).files  # a dry run: removes nothing
        changed.update(self.staged())
        return name not in changed and not any(Path(f).as_posix() == name for f in untracked)

    def stage(self, path: Path) -> bool:
        """Stage the file; True when that changed anything (it differs from the branch)."""
        name = self.relative(path)
        with _oxen(f"add {name}"):
            self._repo.add(str(path.resolve()))
        return name in self.staged()

    def commit(self, message: str) -> str:
        """Commit what is staged; the commit id."""
        with _oxen("commit"):
            made = self._repo.commit(message)
        return str(made.id)

    @contextlib.contextmanager
    def on_branch(self, branch: str | None, files: list[Path]) -> Iterator[str | None]:
        """Work on `branch` (None: the current one) with `files` cleared from the way; then
        the current branch again, with `files` on disk as they were before."""
        current = self.branch
        ours = {self.relative(path) for path in files}
        others = [name for name in self.staged() if name not in ours]
        if others:
            raise staged_refusal(self.root, others)
        if branch is None or branch == current:
            yield current
            return
        if current is None:
            raise OutputError(
                f"output.branch: the Oxen repository {self.root} has no commit yet to make "
                f"branch {branch} from: commit something first, or leave output.branch unset"
            )
        kept = {path: path.read_bytes() for path in files if path.exists()}
        try:
            self._clear(files)
            with _oxen(f"check out branch {branch} (output.branch)"):
                self._repo.checkout(branch, not self._repo.branch_exists(branch))
            try:
                yield branch
            finally:
                self._clear(files)  # what was not committed, so that the checkout may pass
                with _oxen(
                    f"check out branch {current} again after committing to {branch}: the "
                    f"working folder is on {branch}; run `oxen checkout {current}`"
                ):
                    self._repo.checkout(current, False)
        finally:
            for path, data in kept.items():
                write_file(path, data)

    def _clear(self, files: list[Path]) -> None:
        """Unstage `files` and set the working folder's copies back to the branch's."""
        names = {self.relative(path): path for path in files}
        staged = set(self.staged())
        with _oxen("unstage the output"):
            for name in names.keys() & staged:
                self._repo.restore(name, True)
        for path in files:
            path.unlink(missing_ok=True)
        with _oxen("restore the branch's copy of the output"):
            gone = set(self._repo.status().unstaged_removed_files())
            for name in names.keys() & gone:
                self._repo.restore(name)
