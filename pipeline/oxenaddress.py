"""Oxen addresses: `oxen://NAMESPACE:REPO@REVISION/PATH`, a file in an Oxen repository at a
branch or a commit, as the config writes an input or output in a repository.

    oxen://ox:tickets@main/data/in.csv  -> OxenAddress("ox", "tickets", "main", "data/in.csv")

The form is the URL form of Oxen's fsspec backend. Parsing is strict: a namespace or
repository name that is not letters, digits, ".", "_" and "-" (the first a letter or digit),
or a PATH with an empty, "." or ".." part, is a `ConfigError` showing the form and an example.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from .errors import ConfigError

EXPECTED = "oxen://NAMESPACE:REPO@REVISION/PATH"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ADDRESS = re.compile(
    rf"oxen://(?P<namespace>{_NAME}):(?P<repo>{_NAME})@(?P<revision>[^/@:\s]+)/(?P<path>\S+)"
)


@dataclass(frozen=True)
class OxenAddress:
    """A file in an Oxen repository at a revision (a branch name or a commit id)."""

    namespace: str
    repo: str
    revision: str
    path: str

    @classmethod
    def parse(cls, text: str) -> OxenAddress:
        """`oxen://NAMESPACE:REPO@REVISION/PATH`, the URL form of Oxen's fsspec backend."""
        match = _ADDRESS.fullmatch(text.strip())
        parts = match["path"].split("/") if match else []
        if not match or any(part in ("", ".", "..") for part in parts):
            raise ConfigError(
                f"{text!r} is not an Oxen address: expected {EXPECTED} (REVISION a branch or "
                "a commit id, PATH a file in the repository), e.g. oxen://ox:my-repo@main/data.csv"
            )
        return cls(match["namespace"], match["repo"], match["revision"], match["path"])

    def __str__(self) -> str:
        return f"oxen://{self.namespace}:{self.repo}@{self.revision}/{self.path}"

    @property
    def directory(self) -> str:
        """The directory of `path` in the repository ("" at the root)."""
        return posixpath.dirname(self.path)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


def is_oxen(text: str) -> bool:
    """Whether a path in the config means an Oxen repository (keep it a str: Path() would
    fold the `//`)."""
    return text.strip().startswith("oxen://")
