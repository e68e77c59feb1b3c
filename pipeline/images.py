"""Image parts of the render stage: a cell naming an image -> the URL sent for it.

An http(s) or `data:` URL is sent as is. A local path is read only when its real path
(symlinks resolved) lies under an allowed folder, its extension names an image, it is a
regular file under the size cap and its first bytes are an image's: a table from an
untrusted source must not be able to send `/etc/shadow` or `~/.ssh/id_rsa` to the endpoint.
Every refusal is a `RowError` that names the value and the reason; a refused file is never
opened.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import RowError

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})
HEAD_BYTES = 12  # enough for every signature below
MIB = 1024 * 1024


def sniff(head: bytes) -> str | None:
    """The MIME type the first bytes of a file announce, or None when not a known image."""
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class ImageReader:
    """Turns image cells into URLs, reading only images under `roots` and `max_bytes`.

    `base` is the folder relative paths are taken from; it is always an allowed root.
    """

    def __init__(self, base: Path, roots: Iterable[Path] = (), max_bytes: int = 20 * MIB) -> None:
        self._base = base
        real = (Path(os.path.realpath(root)) for root in [base, *roots])
        self.roots = list(dict.fromkeys(real))
        self.max_bytes = max_bytes

    def url(self, value: str) -> str:
        """An http(s) or data URL as is; an allowed local image as a base64 `data:` URL."""
        if value.startswith(("http://", "https://", "data:")):
            return value
        try:
            path = Path(os.path.realpath(self._base / Path(value).expanduser()))
        except (OSError, ValueError) as exc:
            raise RowError(f"image {value!r} cannot be read: {exc}") from None
        if not any(path.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots)
            raise RowError(
                f"image {value!r} is outside the allowed folders ({allowed}); "
                "add its folder to prompt.image_roots to allow it"
            )
        if path.suffix.lower() not in EXTENSIONS:
            raise RowError(
                f"image {value!r} is not an image by its extension "
                f"(allowed: {', '.join(sorted(EXTENSIONS))})"
            )
        try:
            info = path.stat()
        except OSError as exc:
            raise RowError(f"image {value!r} cannot be read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise RowError(f"image {value!r} is not a regular file")
        if info.st_size > self.max_bytes:
            raise RowError(self._too_big(value, info.st_size))
        return self._read(value, path, info)

    def _read(self, value: str, path: Path, info: os.stat_result) -> str:
        try:
            with path.open("rb") as file:
                opened = os.fstat(file.fileno())
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    raise RowError(f"image {value!r} changed while it was being opened")
                head = file.read(HEAD_BYTES)
                mime = sniff(head)
                if mime is None:
                    raise RowError(
                        f"image {value!r}: its content is not an image (PNG, JPEG, GIF or WebP)"
                    )
                data = head + file.read(self.max_bytes + 1 - len(head))
        except OSError as exc:
            raise RowError(f"image {value!r} cannot be read: {exc.strerror or exc}") from None
        if len(data) > self.max_bytes:
            raise RowError(self._too_big(value, len(data)))
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def _too_big(self, value: str, size: int) -> str:
        return (
            f"image {value!r} is too big ({size / MIB:.1f} MB, the cap is "
            f"{self.max_bytes / MIB:g} MB); raise prompt.image_max_mb to allow it"
        )
