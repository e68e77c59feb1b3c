"""Where storage lives: oxen:// and s3:// paths made local stand-ins, the s3:// options and
the oxen section (`OxenConfig`)."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .errors import ConfigError
from .oxenaddress import OxenAddress
from .strict import _Strict, env_name

OXEN_PREFIX = "oxen://"
LOCAL_OXEN = ".pipeline-oxen"  # beside the config: fetched inputs, outputs before their commit


def _oxen_local(data: Any, side: str) -> Any:
    """An `oxen://NS:REPO@REV/PATH` path: checked, kept as `repo`, and `path` becomes the
    local file that stands for it (under LOCAL_OXEN beside the config: the input's cache, or
    the output written there before its commit)."""
    if isinstance(data, dict) and str(data.get("path", "")).startswith(OXEN_PREFIX):
        address = str(data["path"])
        _parse_oxen(address, side)
        where = address[len(OXEN_PREFIX) :].replace(":", "/").replace("@", "/")
        data = {**data, "repo": address, "path": f"{LOCAL_OXEN}/{side}/{where}"}
    return data


def _parse_oxen(address: str, side: str) -> OxenAddress:
    """The address, or a ValueError naming the key (the config's validators add its line)."""
    try:
        return OxenAddress.parse(address)
    except ConfigError:
        key = "output.path" if side == "out" else "input.path"
        revision = "BRANCH" if side == "out" else "REVISION"
        what = "a branch (made when missing)" if side == "out" else "a branch or a commit id"
        raise ValueError(
            f"{key}: {address!r} is not an Oxen address: expected oxen:// followed by "
            f"NAMESPACE:REPO@{revision}/PATH, {revision} {what} and PATH a file in the "
            "repository (oxen://ox:my-repo@main/data.csv for data.csv on branch main of "
            "ox/my-repo)"
        ) from None


S3_PREFIX = "s3://"
LOCAL_S3 = ".pipeline-s3"  # beside the config: downloaded inputs, outputs before their upload


def _s3_local(data: Any, side: str) -> Any:
    """An `s3://BUCKET/KEY` path: kept as `url`, and `path` becomes the local file (or, for a
    Parquet glob, the local glob) that stands for it under LOCAL_S3 beside the config: the
    input's download cache, or the output written there before its upload."""
    if isinstance(data, dict) and str(data.get("path", "")).startswith(S3_PREFIX):
        from .objectstore import S3Url  # checks the URL's shape

        url = S3Url.parse(str(data["path"]), side)
        data = {**data, "url": str(url), "path": f"{LOCAL_S3}/{side}/{url.bucket}/{url.key}"}
    return data


def overwrites_input(
    input_repo: str | None,
    output_repo: str | None,
    input_url: str | None,
    output_url: str | None,
    same_endpoint: bool,
) -> str | None:
    """Why output.path would replace the input itself: the same file on the same branch of
    one Oxen repository, or the same S3 object (or one the input's glob reads) at the same
    endpoint; None when it would not. A local output that is the input file is refused by
    checks.check_output."""
    if input_repo is not None and output_repo is not None:
        source, target = OxenAddress.parse(input_repo), OxenAddress.parse(output_repo)
        if source == target:
            return (
                f"output.path and input.path name the same file, {target.path} on branch "
                f"{target.revision} of the Oxen repository {target.namespace}/{target.repo}: "
                "the run would commit its output over its own input, and every later run would "
                "read the output as its input; set output.path to another file or branch"
            )
    if input_url is not None and output_url is not None and same_endpoint:
        from .objectstore import S3Url

        read, written = S3Url.parse(input_url, "in"), S3Url.parse(output_url, "out")
        if read.bucket != written.bucket:
            return None
        if read.key == written.key:
            return (
                f"output.path and input.path name the same object, {written}: the upload "
                "would replace the run's own input; set output.path to another key"
            )
        if (
            read.is_glob
            and read.directory == written.directory
            and fnmatch.fnmatchcase(written.name, read.name)
        ):
            return (
                f"output.path {written} matches input.path's glob {read}: every later run "
                "would read the output as a part of its input; set output.path to a key the "
                "glob does not match"
            )
    return None


class StorageOptions(_Strict):
    """Where an s3:// path lives and which variables hold its credentials (never the
    credentials themselves)."""

    endpoint_url: str | None = Field(
        default=None,
        description="the S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO (http:// is spoken "
        "in plain HTTP); unset: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS itself",
    )
    region: str | None = Field(
        default=None,
        description="the bucket's region; unset: AWS_REGION or AWS_DEFAULT_REGION, else asked "
        "of AWS (us-east-1 with an endpoint_url)",
    )
    access_key_id_env: str = Field(
        default="AWS_ACCESS_KEY_ID",
        description="the NAME of the variable holding the access key id; when the default "
        "variables are unset, the AWS SDK's own chain (profile, instance role) is used",
    )
    secret_access_key_env: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        description="the NAME of the variable holding the secret access key",
    )
    session_token_env: str = Field(
        default="AWS_SESSION_TOKEN",
        description="the NAME of the variable holding a session token (temporary credentials)",
    )
    anonymous: bool = Field(
        default=False,
        description="send no credentials at all (a public bucket)",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in ("access_key_id", "secret_access_key", "session_token"):
                if name in data:
                    raise ValueError(
                        f"{name} is a secret and is not written in the config: put it in an "
                        f"environment variable and name that in {name}_env (default "
                        f"AWS_{name.upper()})"
                    )
        return data

    @field_validator(
        "access_key_id_env", "secret_access_key_env", "session_token_env", mode="before"
    )
    @classmethod
    def _names(cls, value: Any) -> Any:
        return env_name(value)


def _storage_needs_url(url: str | None, options: StorageOptions, side: str) -> None:
    if url is None and options != StorageOptions():
        raise ValueError(f"{side}.storage_options applies to s3:// paths only")


class OxenConfig(_Strict):
    host: str = Field(default="hub.oxen.ai", description="the Oxen hub (or oxen-server) host")
    scheme: Literal["https", "http"] = Field(default="https", description="https or http")
    api_key_env: str | None = Field(
        default=None,
        description="the environment variable holding the hub's key; unset: model.api_key_env "
        "(Oxen's inference and repositories take the same key)",
    )

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return env_name(value)
