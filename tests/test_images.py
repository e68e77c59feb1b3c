"""Unit tests for `pipeline.images`: which local files may be sent, and nothing else is read."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from e2e import run_cli, write_config
from fake_server import FakeServer, last_content

from pipeline.configfile import load
from pipeline.errors import RowError
from pipeline.images import HEAD_BYTES, ImageReader, sniff


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
        + chunk(b"IEND", b"")
    )


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class Counting:
    """A file that counts the bytes read from it."""

    def __init__(self, file: Any, log: dict[str, int], name: str) -> None:
        self._file, self._log, self._name = file, log, name

    def __enter__(self) -> Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def fileno(self) -> int:
        return int(self._file.fileno())

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._file.read(size))
        self._log[self._name] += len(data)
        return data


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Bytes read from each file opened through `Path.open`, by file name."""
    log: dict[str, int] = {}
    real_open = Path.open

    def counting_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "r" not in mode:  # the test writing its files
            return real_open(self, mode, *args, **kwargs)
        log.setdefault(self.name, 0)
        return Counting(real_open(self, mode, *args, **kwargs), log, self.name)

    monkeypatch.setattr(Path, "open", counting_open)
    yield log


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cat.png").write_bytes(tiny_png())
    return folder


def refused(reader: ImageReader, value: str, *reasons: str) -> None:
    with pytest.raises(RowError) as info:
        reader.url(value)
    message = str(info.value)
    assert repr(value) in message
    for reason in reasons:
        assert reason in message, message


# --- accepted ----------------------------------------------------------------------------


def test_a_png_under_the_root_is_sent_as_a_data_url(root: Path, opened: dict[str, int]) -> None:
    assert ImageReader(root).url("cat.png") == data_url("image/png", tiny_png())
    assert opened == {"cat.png": len(tiny_png())}


def test_the_mime_type_comes_from_the_content_not_the_extension(root: Path) -> None:
    (root / "cat.jpg").write_bytes(tiny_png())

    assert ImageReader(root).url("cat.jpg").startswith("data:image/png;base64,")


def test_an_absolute_path_inside_the_root_is_read(root: Path) -> None:
    assert ImageReader(root).url(str(root / "cat.png")) == data_url("image/png", tiny_png())


@pytest.mark.parametrize(
    "value",
    ["http://example.test/a.png", "https://example.test/b", "data:image/png;base64,AAAA"],
)
def test_urls_pass_through_unchanged(value: str, opened: dict[str, int]) -> None:
    assert ImageReader(Path("/nonexistent")).url(value) == value
    assert opened == {}


@pytest.mark.parametrize(
    ("head", "mime"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png"),
        (b"\xff\xd8\xff\xe0\0\x10JFIF\0", "image/jpeg"),
        (b"GIF89a\x01\0\x01\0", "image/gif"),
        (b"GIF87a\x01\0\x01\0", "image/gif"),
        (b"RIFF\x1a\0\0\0WEBPVP8 ", "image/webp"),
        (b"RIFF\x1a\0\0\0WAVEfmt ", None),
        (b"root:x:0:0:root", None),
        (b"", None),
    ],
)
def test_sniff_knows_the_image_signatures(head: bytes, mime: str | None) -> None:
    assert sniff(head[:HEAD_BYTES]) == mime


def test_an_extra_root_allows_files_there(root: Path, tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "dog.png").write_bytes(tiny_png())

    refused(ImageReader(root), "../pics/dog.png", "outside the allowed folders")
    assert ImageReader(root, [pics]).url("../pics/dog.png") == data_url("image/png", tiny_png())


def test_image_roots_in_the_config_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "input: {path: in.csv}\n"
        "prompt: {template: x, images: [img], image_roots: [../pics, /srv/img], image_max_mb: 2}\n"
        "output: {path: out.csv}\n",
        encoding="utf-8",
    )
    prompt = load(tmp_path / "job.yaml").prompt

    assert prompt.image_roots == [tmp_path.parent / "pics", Path("/srv/img")]
    assert prompt.image_max_mb == 2
    assert load(tmp_path / "job.yaml", ["prompt.image_roots=[]"]).prompt.image_max_mb == 2


# --- refused: nothing is opened ----------------------------------------------------------


def test_dotdot_outside_the_root_is_refused(
    root: Path, tmp_path: Path, opened: dict[str, int]
) -> None:
    (tmp_path / "outside.png").write_bytes(tiny_png())

    refused(
        ImageReader(root),
        "../outside.png",
        "outside the allowed folders",
        str(root),
        "prompt.image_roots",
    )
    assert opened == {}


def test_an_absolute_path_outside_the_root_is_refused(root: Path, opened: dict[str, int]) -> None:
    refused(ImageReader(root), "/etc/passwd", "outside the allowed folders")
    refused(ImageReader(root), "/etc/shadow", "outside the allowed folders")
    assert opened == {}


def test_a_symlink_pointing_outside_is_refused(
    root: Path, tmp_path: Path, opened: dict[str, int]
) -> None:
    (tmp_path / "secret.png").write_bytes(tiny_png())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "sub").symlink_to(tmp_path, target_is_directory=True)

    refused(ImageReader(root), "link.png", "outside the allowed folders")
    refused(ImageReader(root), "sub/secret.png", "outside the allowed folders")
    assert opened == {}


def test_a_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias.png").symlink_to(root / "cat.png")

    assert ImageReader(root).url("alias.png") == data_url("image/png", tiny_png())


def test_home_is_refused_unless_it_is_a_root(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, opened: dict[str, int]
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (home / "me.png").write_bytes(tiny_png())
    monkeypatch.setenv("HOME", str(home))

    refused(ImageReader(root), "~/.ssh/id_rsa", "outside the allowed folders")
    refused(ImageReader(root), "~/me.png", "outside the allowed folders")
    assert opened == {}
    widened = ImageReader(root, [home])
    assert widened.url("~/me.png") == data_url("image/png", tiny_png())
    refused(widened, "~/.ssh/id_rsa", "not an image by its extension")
    assert "id_rsa" not in opened


@pytest.mark.parametrize("name", ["notes.txt", "secret", "photo.png.sh", "archive.svg"])
def test_a_file_without_an_image_extension_is_refused(
    root: Path, name: str, opened: dict[str, int]
) -> None:
    (root / name).write_bytes(tiny_png())

    refused(ImageReader(root), name, "not an image by its extension", ".png")
    assert opened == {}


def test_a_file_over_the_cap_is_refused(root: Path, opened: dict[str, int]) -> None:
    (root / "big.png").write_bytes(tiny_png() + b"\0" * 100)

    refused(ImageReader(root, max_bytes=100), "big.png", "too big", "prompt.image_max_mb")
    assert opened == {}
    assert ImageReader(root, max_bytes=len(tiny_png())).url("cat.png")


def test_a_missing_file_is_refused(root: Path) -> None:
    refused(ImageReader(root), "gone.png", "cannot be read", "No such file")


def test_a_folder_named_like_an_image_is_refused(root: Path) -> None:
    (root / "album.png").mkdir()

    refused(ImageReader(root), "album.png", "not a regular file")


def test_a_null_byte_in_the_value_is_refused(root: Path) -> None:
    refused(ImageReader(root), "cat.png\0", "cannot be read")


# --- refused after the first bytes -------------------------------------------------------


def test_text_with_an_image_extension_is_refused_after_its_first_bytes(
    root: Path, opened: dict[str, int]
) -> None:
    (root / "fake.png").write_text("root:x:0:0:root:/root:/bin/bash\n" * 100)

    refused(ImageReader(root), "fake.png", "content is not an image")
    assert opened == {"fake.png": HEAD_BYTES}


# --- end to end --------------------------------------------------------------------------


def test_the_cli_sends_the_good_image_and_fails_the_refused_rows(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "cat.png").write_bytes(tiny_png())
    outside = tiny_png() + b"outside-marker"
    (tmp_path / "outside.png").write_bytes(outside)
    pl.DataFrame(
        {"text": ["good", "passwd", "up"], "img": ["cat.png", "/etc/passwd", "../outside.png"]}
    ).write_csv(job / "in.csv")
    with FakeServer() as server:
        config = write_config(
            job, server.base_url, prompt={"template": "{{ text }}", "images": ["img"]}
        )
        ran = run_cli("run", str(config))
        bodies = list(server.requests)

    assert ran.code == 1, ran.stderr
    out = pl.read_parquet(job / "out/answers.parquet")
    assert out["_status"].to_list() == ["ok", "failed", "failed"]
    assert out["answer"][0] == "echo: good"
    assert "'/etc/passwd'" in out["_error"][1] and "outside the allowed folders" in out["_error"][1]
    assert "'../outside.png'" in out["_error"][2] and "prompt.image_roots" in out["_error"][2]
    assert [last_content(b) for b in bodies] == ["good"]
    sent = json.dumps(bodies)
    assert data_url("image/png", tiny_png()) in sent
    assert base64.b64encode(outside).decode() not in sent
    assert sent.count("data:") == 1
