"""Object storage stage: s3:// inputs and outputs, through pyarrow's S3 filesystem.

    s3://BUCKET/DIR/NAME       -> HEAD: its ETag -> DIR/v-<version>/NAME under the input's
                                  local stand-in folder, downloaded when not there yet
    s3://BUCKET/DIR/*.parquet  -> LIST DIR: the matching keys, in key order, each with its
                                  size and last-modified time -> each cached likewise -> the
                                  parts of one table
    an s3:// output            -> checked before sending, uploaded whole: `s3output`

A rerun of an unchanged object downloads nothing; a newer version replaces the cached one.
The output is uploaded to a temporary key beside the target and then copied to it inside
S3, so the target changes in one step from the old object to the complete new one, or not
at all: pyarrow's upload stream, closed after a failure, completes the upload with the bytes
it has, and that must never be the target. CopyObject takes objects up to 5 GiB; a larger
output is uploaded to the target directly (a multipart upload, visible only once complete).

Credentials come from the variables storage_options names (AWS_ACCESS_KEY_ID, ... by
default) and are handed to pyarrow only: no message, log line or file holds them. pyarrow's
errors are translated at one seam (`_translated`), which names the URL and what was being
done, and removes any credential value from pyarrow's text.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import logging
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pyarrow as pa
from pyarrow import fs

from .errors import ConfigError, InputError, OutputError
from .redact import hidden
from .source import FORMATS

if TYPE_CHECKING:
    from .config import Config, StorageOptions

log = logging.getLogger(__name__)

EXPECTED = "s3://BUCKET/KEY"
_BLOCK = 8 << 20
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_GLOB = re.compile(r"[*?\[]")
PARQUET = (".parquet", ".pq")

ErrorType = type[InputError] | type[OutputError]


@dataclass(frozen=True)
class S3Url:
    """An object (or, for an input, a glob over a folder's Parquet objects) in a bucket."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, text: str, side: str = "in") -> S3Url:
        """`s3://BUCKET/KEY`; a ValueError says what is wrong (the config's validators
        turn it into an error naming the key and line)."""
        bucket, _, key = text.strip().removeprefix("s3://").partition("/")
        parts = key.split("/")
        if _BUCKET.fullmatch(bucket) and key.strip("/") == "":
            raise ValueError(
                f"{text!r} is not an S3 object URL: it names the bucket {bucket}, not an "
                f"object; add the file's key, e.g. s3://{bucket}/tickets.csv"
            )
        named = all(p not in ("", ".", "..") for p in parts[:-1])
        if _BUCKET.fullmatch(bucket) and key.endswith("/") and named:
            raise ValueError(
                f"{text!r} is not an S3 object URL: it names a folder; add a file name "
                f"after it, e.g. {text.strip()}tickets.csv"
            )
        if not _BUCKET.fullmatch(bucket) or any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"{text!r} is not an S3 object URL: expected {EXPECTED}, e.g. "
                "s3://my-bucket/data/tickets.csv (no empty, . or .. path segments)"
            )
        url = cls(bucket, key)
        if any(_GLOB.search(part) for part in parts[:-1]):
            raise ValueError(f"{text}: a glob may only be in the last path segment")
        if url.is_glob and side == "out":
            raise ValueError(f"{text}: an output is one object; a glob is for inputs")
        if url.is_glob and not url.name.lower().endswith(PARQUET):
            raise ValueError(f"{text}: a glob is for Parquet inputs (ending .parquet or .pq)")
        suffix = posixpath.splitext(url.name)[1]
        if suffix.lower() not in FORMATS:
            has = f"the extension {suffix!r}" if suffix else "no extension"
            raise ValueError(
                f"{text}: the key has {has}, and the extension names the table format: "
                f"use one of {', '.join(sorted(FORMATS))}"
            )
        return url

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def is_glob(self) -> bool:
        return _GLOB.search(self.name) is not None

    @property
    def directory(self) -> str:
        """The key's folder ("" at the bucket's root)."""
        return posixpath.dirname(self.key)

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    def at(self, key: str) -> S3Url:
        return S3Url(self.bucket, key)

    @property
    def path(self) -> str:
        """The object as pyarrow names it: BUCKET/KEY."""
        return f"{self.bucket}/{self.key}"


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


class Session:
    """One S3 filesystem for a URL, from storage_options and the environment; it knows the
    credential values only to take them out of error messages."""

    def __init__(self, options: StorageOptions, url: S3Url, error: ErrorType) -> None:
        self.url, self.error = url, error
        self._secrets: list[str] = []
        self.endpoint = (
            options.endpoint_url or _env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")
        )
        kwargs: dict[str, object] = {}
        if self.endpoint:
            parts = urlsplit(
                self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}"
            )
            if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
                raise ConfigError(
                    f"the S3 endpoint must be http(s)://HOST[:PORT], with no credentials in it; "
                    f"got scheme {parts.scheme!r} for {url}"
                )
            kwargs["endpoint_override"] = parts.netloc
            kwargs["scheme"] = parts.scheme
            self.endpoint = f"{parts.scheme}://{parts.netloc}"
        if options.anonymous:
            kwargs["anonymous"] = True
        else:
            kwargs.update(self._credentials(options))
        region = options.region or _env("AWS_REGION") or _env("AWS_DEFAULT_REGION")
        if region is None and not self.endpoint:
            with self.translated("finding the bucket's region"):
                region = fs.resolve_s3_region(url.bucket)
        kwargs["region"] = region or "us-east-1"
        with self.translated("connecting"):
            self.fs = fs.S3FileSystem(**kwargs)

    def _credentials(self, options: StorageOptions) -> dict[str, object]:
        """The key pair (and token) from the variables named; none: the AWS SDK's chain."""
        names = (options.access_key_id_env, options.secret_access_key_env)
        key, secret = (_env(name) for name in names)
        token = _env(options.session_token_env)
        self._secrets = [value for value in (key, secret, token) if value]
        if key is None and secret is None:
            custom = [n for n, d in zip(names, _DEFAULT_NAMES, strict=True) if n != d]
            if custom:
                raise ConfigError(
                    f"{self.url}: the environment variable {custom[0]} is not set "
                    "(storage_options names it for the S3 credentials)"
                )
            log.debug("%s: no key in %s, using the AWS SDK's credential chain", self.url, names[0])
            return {}
        if key is None or secret is None:
            missing = names[0] if key is None else names[1]
            raise ConfigError(f"{self.url}: {missing} is not set, and the S3 credentials need it")
        return {"access_key": key, "secret_key": secret, "session_token": token}

    @contextlib.contextmanager
    def translated(self, doing: str, url: S3Url | None = None) -> Iterator[None]:
        """pyarrow's errors as `self.error`, naming the URL and what was being done."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise self.error(self.describe(exc, doing, url or self.url)) from None

    def describe(self, exc: BaseException, doing: str, url: S3Url) -> str:
        text = self.redact(str(exc))
        upper = text.upper().replace("_", "")
        where = f" at {self.endpoint}" if self.endpoint else ""
        if "NOSUCHBUCKET" in upper:
            return f"{url}: bucket '{url.bucket}' not found{where} ({doing})"
        if "ACCESSDENIED" in upper or "FORBIDDEN" in upper:
            return (
                f"{url}: access denied ({doing}); check the S3 credentials "
                "(storage_options' *_env variables, AWS_* by default) and the bucket's policy"
            )
        if "INVALIDACCESSKEYID" in upper or "SIGNATUREDOESNOTMATCH" in upper:
            return f"{url}: the S3 credentials were refused ({doing}); check the key pair"
        if isinstance(exc, FileNotFoundError) or "NOSUCHKEY" in upper:
            return f"{url}: no such object ({doing})"
        if "CURLCODE" in upper or "NETWORKCONNECTION" in upper:
            return f"{url}: cannot reach the S3 endpoint{where or ' of AWS'} ({doing})"
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return f"{url}: {doing} failed: {first}"

    def redact(self, text: str) -> str:
        return hidden(text, *self._secrets)

    def bucket_exists(self, url: S3Url) -> bool | None:
        """Whether the bucket exists; None when the credentials may not look (a writer
        without s3:ListBucket)."""
        try:
            return bool(self.fs.get_file_info(url.bucket).type != fs.FileType.NotFound)
        except (OSError, pa.ArrowException) as exc:
            if "ACCESSDENIED" in str(exc).upper().replace("_", ""):
                return None
            raise self.error(self.describe(exc, "looking for the bucket", url)) from None

    def not_found(self, url: S3Url, doing: str) -> PipelineErrorLike:
        """The error for a missing object: the bucket's, when that is what is missing."""
        if self.bucket_exists(url) is False:
            where = f" at {self.endpoint}" if self.endpoint else ""
            return self.error(f"{url}: bucket '{url.bucket}' not found{where} ({doing})")
        return self.error(f"{url}: no such object in bucket '{url.bucket}' ({doing})")


PipelineErrorLike = InputError | OutputError
_DEFAULT_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


# -- input ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """One object to read, and the version it is cached under."""

    url: S3Url
    version: str
    size: int


def fetch_input(config: Config) -> list[Path]:
    """The input's local copies, in key order: one file, or the Parquet glob's parts.
    Each is downloaded only when that version of the object is not cached yet."""
    assert config.input.url is not None
    url = S3Url.parse(config.input.url, "in")
    folder = config.input.path.parent  # the stand-in's folder: DIR under .pipeline-s3/in/
    session = Session(config.input.storage_options, url, InputError)
    remotes = _listed(session, url) if url.is_glob else [_head(session, url)]
    parts = [_cached(session, remote, folder) for remote in remotes]
    _prune(folder, set(parts), url.name if url.is_glob else _escape(url.name))
    got = sum(remote.size for remote in remotes)
    log.info("input %s: %d object(s), %d bytes, in %s", url, len(parts), got, folder)
    return parts


def _version(identity: str) -> str:
    return "v-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def _head(session: Session, url: S3Url) -> Remote:
    """The object's version: its ETag, else its size and last-modified time."""
    try:
        with session.fs.open_input_file(url.path) as file:
            meta = file.metadata()
            size = file.size()
    except FileNotFoundError:
        raise session.not_found(url, "reading the object") from None
    except (OSError, pa.ArrowException) as exc:
        raise session.error(session.describe(exc, "reading the object", url)) from None
    etag = meta.get(b"ETag") or meta.get(b"etag")
    stamp = meta.get(b"Last-Modified", b"")
    identity = f"etag:{etag.decode()}" if etag else f"size:{size}:{stamp.decode()}"
    return Remote(url, _version(identity), size)


def _listed(session: Session, url: S3Url) -> list[Remote]:
    """The glob's matching objects in key order, versioned by size and last-modified time
    (the listing gives no ETag; a HEAD per part would cost a request each)."""
    prefix = f"{url.bucket}/{url.directory}".rstrip("/")
    selector = fs.FileSelector(prefix, recursive=False, allow_not_found=True)
    with session.translated("listing the matching objects"):
        found = session.fs.get_file_info(selector)
    remotes = []
    for info in sorted(found, key=lambda i: i.path):
        name = posixpath.basename(info.path)
        if info.type == fs.FileType.File and fnmatch.fnmatchcase(name, url.name):
            stamp = info.mtime_ns if info.mtime_ns is not None else ""
            identity = f"size:{info.size}:{stamp}"
            key = posixpath.join(url.directory, name)
            remotes.append(Remote(url.at(key), _version(identity), info.size or 0))
    if not remotes:
        if session.bucket_exists(url) is False:
            raise session.error(f"{url}: bucket '{url.bucket}' not found")
        raise session.error(f"{url}: no object in bucket '{url.bucket}' matches the glob")
    return remotes


def _cached(session: Session, remote: Remote, folder: Path) -> Path:
    """The object's local copy at `folder/<version>/<name>`, downloaded if missing."""
    target = folder / remote.version / remote.url.name
    if target.is_file():
        log.debug("%s: version %s already in %s", remote.url, remote.version, target)
        return target
    doing = "downloading the object"
    try:
        source = session.fs.open_input_stream(remote.url.path)
    except FileNotFoundError:
        raise session.not_found(remote.url, doing) from None
    except (OSError, pa.ArrowException) as exc:
        raise session.error(session.describe(exc, doing, remote.url)) from None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with source, tmp.open("wb") as out:
            while True:
                with session.translated(doing, remote.url):
                    block = source.read(_BLOCK)
                if not block:
                    break
                out.write(block)
        tmp.replace(target)
    except OSError as exc:  # the local side: pyarrow's errors are translated above
        raise session.error(f"cannot keep the copy of {remote.url} in {target}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes)", remote.url, remote.size)
    return target


def _escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _prune(folder: Path, keep: set[Path], pattern: str) -> None:
    """Remove the older versions of what was fetched (and parts no longer matching)."""
    for old in folder.glob(f"v-*/{pattern}"):
        if old not in keep and old.is_file():
            with contextlib.suppress(OSError):
                old.unlink()
                if not any(old.parent.iterdir()):
                    old.parent.rmdir()
