"""Local Oxen repositories for the tests, each operation in a child process of its own.

oxen (Oxen's Python package) keeps a repository's refs database locked for as long as the
process that first touched the repository lives, and no call releases it: a test process that
opened one would lock the CLI under test out of it. So the tests never open a repository
themselves; `OxenRepo` runs every operation as

    python tests/oxen_repo.py OPERATION ROOT < arguments.json   -> JSON, stdout's last line

Reading logs and files at a branch or commit (`inspect`) works in copies of the repository's
.oxen folder, so the working folder under test is never changed by looking at it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


class OxenRepo:
    """A local Oxen repository at `root`, worked on from child processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _call(self, operation: str, **arguments: Any) -> Any:
        done = subprocess.run(
            [sys.executable, str(HERE), operation, str(self.root)],
            input=json.dumps(arguments),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"oxen {operation} failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(done.stdout.splitlines()[-1])

    def init(self, files: dict[str, str], message: str) -> str:
        """A new repository with one commit holding `files`; its id."""
        return str(self._call("init", files=files, message=message))

    def commit(self, files: dict[str, str], message: str) -> str:
        """Write `files`, add and commit them on the current branch; the commit's id."""
        return str(self._call("commit", files=files, message=message))

    def stage(self, path: str, staged: bool = True) -> None:
        """Add `path` to the staging area, or (staged=False) take it out again."""
        self._call("stage", path=path, staged=staged)

    def inspect(self, *show: tuple[str, str]) -> dict[str, Any]:
        """The current branch, each branch's head and log (newest first: id, message,
        parent_ids), the status, and the text of each (revision, path) in `show`.

        Tried up to three times: it copies the .oxen folder, and a CLI under test that opens
        the repository meanwhile replaces some of RocksDB's files under the copy.
        """
        arguments = {"show": [list(pair) for pair in show]}
        for _ in range(2):
            with contextlib.suppress(AssertionError):
                return dict(self._call("inspect", **arguments))
        return dict(self._call("inspect", **arguments))


def _write(root: Path, files: dict[str, str]) -> list[Path]:
    paths = []
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def _commit(repo: Any, root: Path, files: dict[str, str], message: str) -> str:
    for path in _write(root, files):
        repo.add(str(path))
    return str(repo.commit(message).id)


def _inspect(root: Path, show: list[list[str]]) -> dict[str, Any]:
    import oxen

    repo = oxen.Repo(str(root))
    status = repo.status()
    current = repo.current_branch
    found: dict[str, Any] = {
        "current": None if current is None else current.name,
        "heads": {b.name: str(b.commit_id) for b in repo.branches()},
        "status": {
            "added": status.added_files(),
            "modified": status.modified_files(),
            "removed": status.removed_files(),
            "unstaged_modified": status.unstaged_modified_files(),
            "unstaged_removed": status.unstaged_removed_files(),
        },
    }
    with tempfile.TemporaryDirectory() as scratch:

        def copy(name: str) -> Any:
            """A copy of the .oxen folder, its working files those of the current branch.

            Without RocksDB's LOG files (its own diagnostics, not data): a CLI under test that
            opens the repository meanwhile renames them, and a copy would miss one.
            """
            shutil.copytree(
                root / ".oxen",
                Path(scratch) / name / ".oxen",
                ignore=shutil.ignore_patterns("LOG", "LOG.old.*"),
            )
            other = oxen.Repo(str(Path(scratch) / name))
            other.restore(".")
            return other

        logs = {}
        for name in found["heads"]:
            other = copy(f"log-{name}")
            other.checkout(name)
            logs[name] = [
                {"id": str(c.id), "message": c.message, "parent_ids": list(c.parent_ids)}
                for c in other.log()
            ]
        found["logs"] = logs
        other = copy("files")
        files = {}
        for revision, path in show:
            other.restore(path, source=revision)
            files[f"{revision}:{path}"] = (Path(other.path) / path).read_text(encoding="utf-8")
        found["files"] = files
    return found


def main(operation: str, root: Path, arguments: dict[str, Any]) -> Any:
    import oxen

    if operation == "init":
        root.mkdir(parents=True, exist_ok=True)
        return _commit(oxen.init(str(root)), root, arguments["files"], arguments["message"])
    repo = oxen.Repo(str(root))
    if operation == "commit":
        return _commit(repo, root, arguments["files"], arguments["message"])
    if operation == "stage":
        if arguments["staged"]:
            repo.add(str(root / arguments["path"]))
        else:
            repo.restore(arguments["path"], staged=True)
        return None
    if operation == "inspect":
        return _inspect(root, arguments["show"])
    raise SystemExit(f"unknown operation {operation!r}")


if __name__ == "__main__":
    result = main(sys.argv[1], Path(sys.argv[2]), json.loads(sys.stdin.read()))
    print("\n" + json.dumps(result))
