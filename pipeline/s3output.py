"""Object storage, the output side: an s3:// output checked before sending, and uploaded
whole or not at all (see `objectstore` for the URLs, the session and the input side).

    before anything is sent    -> PUT DIR/.NAME.probe.tmp (empty) -> DELETE it: a refusal
                                  is found before the run pays for a request
    the complete output        -> PUT DIR/.NAME.<token>.tmp -> COPY to DIR/NAME -> DELETE
                                  the temporary key (no HEAD: a policy may refuse it)
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from pyarrow import fs

from .errors import OutputError
from .objectstore import S3Url, Session

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

COPY_LIMIT = 5 * 1024**3  # CopyObject's limit on the object copied
PROBE = ".probe.tmp"  # DIR/.NAME.probe.tmp: the empty object that proves the output writable


def check_bucket(config: Config) -> None:
    """Before anything is sent: the output can be written. Its bucket is looked up (when
    the credentials may look: a 403 there says nothing), then an empty probe object is
    written beside the target and deleted at once, so credentials or a policy that would
    refuse the upload end the run before it pays for any request. Each request is bounded
    by the AWS SDK's timeouts (3 s without a byte, 3 tries)."""
    assert config.output.url is not None
    url = S3Url.parse(config.output.url, "out")
    session = Session(config.output.storage_options, url, OutputError)
    if session.bucket_exists(url) is False:
        where = f" at {session.endpoint}" if session.endpoint else ""
        raise OutputError(f"{url}: bucket '{url.bucket}' not found{where}; create it first")
    probe = url.at(posixpath.join(url.directory, f".{url.name}{PROBE}"))
    try:
        with session.fs.open_output_stream(probe.path):
            pass  # empty: one PutObject's worth (pyarrow's multipart upload, as the output's)
    except (OSError, pa.ArrowException) as exc:
        doing = f"writing an empty probe object, {probe.name}, beside it before sending"
        raise OutputError(f"output.path {session.describe(exc, doing, url)}") from None
    _delete(session, probe, "probe object")


def upload_output(config: Config, output: Path, copy_limit: int = COPY_LIMIT) -> str:
    """Upload the complete local output to its URL, replacing the object in one step; the
    URL written. On failure the object is as it was, and the local output stays."""
    assert config.output.url is not None
    url = S3Url.parse(config.output.url, "out")
    session = Session(config.output.storage_options, url, OutputError)
    local = fs.LocalFileSystem()
    size = output.stat().st_size
    if size > copy_limit:  # too big for CopyObject: a multipart upload straight to the key
        with session.translated("uploading the output"):
            fs.copy_files(str(output), url.path, local, session.fs)
        log.info("uploaded %s (%d bytes) to %s", output.name, size, url)
        return str(url)
    temporary = url.at(posixpath.join(url.directory, f".{url.name}.{uuid.uuid4().hex[:12]}.tmp"))
    uploaded = placed = False
    try:
        with session.translated(f"uploading the output to the temporary key {temporary.key}"):
            fs.copy_files(str(output), temporary.path, local, session.fs)
        uploaded = True
        _move(session, temporary, url)
        placed = True
    finally:
        if not placed:
            _delete(session, temporary, "temporary key", surely_there=uploaded)
    log.info("uploaded %s (%d bytes) to %s", output.name, size, url)
    return str(url)


def _move(session: Session, temporary: S3Url, url: S3Url) -> None:
    """CopyObject the temporary key to the target, then DeleteObject it (pyarrow's move,
    which looks nothing up: a policy refusing HEAD still gets its temporary key deleted).
    An error only when the copy failed, the target then as it was."""
    try:
        session.fs.move(temporary.path, url.path)
    except (OSError, pa.ArrowException) as exc:
        if "CopyObject" in str(exc) or "copying key" in str(exc):
            raise session.error(
                session.describe(exc, "copying the uploaded output to its key", url)
            ) from None
        _left(session, exc, temporary, "temporary key")  # in place; the delete failed


def _delete(session: Session, key: S3Url, what: str, surely_there: bool = True) -> None:
    """Delete a probe or temporary key; a warning, never an error, when it stays."""
    try:
        session.fs.delete_file(key.path)
    except FileNotFoundError:
        pass
    except (OSError, pa.ArrowException) as exc:
        _left(session, exc, key, what, surely_there)


def _left(
    session: Session, exc: BaseException, key: S3Url, what: str, surely_there: bool = True
) -> None:
    """Warn that `key` stays in the bucket, naming the request refused: pyarrow looks a key
    up (HEAD) before it deletes it, and recreates the folder marker after (harmless)."""
    text = str(exc)
    if "HeadObject" in text or "getting information for key" in text:
        doing = f"looking up the {what} to delete it"
    elif "DeleteObject" in text or "delete key" in text:
        doing = f"deleting the {what}"
    else:
        log.debug("%s: deleted; %s", key, session.describe(exc, "recreating its folder", key))
        return
    stays = "it stays in the bucket" if surely_there else "if it was written, it stays there"
    log.warning("%s; %s", session.describe(exc, doing, key), stays)
