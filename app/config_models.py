"""Configuration models of the newer options (SPEC 2.14, 2.15, 5): storage copies and a target's
anomaly thresholds. Validated when the settings are built, like every other setting."""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

LOCATION_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
ObjectLockMode = Literal["governance", "compliance"]


def check_storage_url(value: str) -> str:
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # s3://KEY:SECRET@bucket would be taken as a bucket name, and bucket names are shown
        # (/readyz, errors, start-up lines): credentials go in variables, never in a URL.
        raise ValueError("the URL must not hold credentials (user:secret@): S3 credentials "
                         "come from the AWS variables, or for a copy from the variables "
                         "access_key_id_env and secret_access_key_env name")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("s3:// URL needs a bucket: s3://bucket/prefix")
    elif parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("file:// URL needs an absolute path: file:///var/lib/pgvault")
    else:
        raise ValueError("must start with s3:// or file://")
    return value


def same_place(url: str, endpoint: str | None) -> tuple[str, ...]:
    """What identifies a storage location: two locations with the same are one place (a folder
    through its links resolved), whatever their names."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return ("file", os.path.realpath(parts.path))
    return ("s3", (endpoint or "").rstrip("/"), parts.netloc, parts.path.strip("/"))


def check_lockable(days: int | None, info: ValidationInfo, url_field: str) -> int | None:
    """Object Lock is an S3 feature: a local folder cannot hold an object against deletion."""
    url = info.data.get(url_field)
    if days is not None and isinstance(url, str) and urlsplit(url).scheme == "file":
        raise ValueError("object_lock_days needs an s3:// location: a local folder "
                         "(file://) cannot lock objects")
    return days


class CopyConfig(BaseModel):
    """One further storage location (SPEC 2.15): every archive is written here too. Its
    credentials are named by the environment variables that hold them, never given inline."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the location's name in archive listings and results")
    url: str = Field(description="s3://bucket/prefix or file:///absolute/path")
    s3_endpoint_url: str | None = None
    s3_region: str | None = Field(None, description="default: PGVAULT_S3_REGION")
    access_key_id_env: str | None = Field(
        None, description="environment variable holding the access key id")
    secret_access_key_env: str | None = Field(
        None, description="environment variable holding the secret access key")
    object_lock_days: int | None = Field(None, ge=1, le=36500)
    object_lock_mode: ObjectLockMode = "governance"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not LOCATION_NAME_RE.match(value) or value == "primary":
            raise ValueError(f"copy name {value!r} must match {LOCATION_NAME_RE.pattern} "
                             "and not be 'primary'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_storage_url(value)

    @field_validator("object_lock_days")
    @classmethod
    def _lockable(cls, value: int | None, info: ValidationInfo) -> int | None:
        return check_lockable(value, info, "url")

    @field_validator("access_key_id_env", "secret_access_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"{value[:40]!r} is not an environment variable name (give the "
                             "variable's name, never the credential itself)")
        return value

    def credentials(self) -> tuple[str, str] | None:
        """(access key id, secret) read from the named variables; None: the standard AWS
        variables. A variable named but unset is an error for the operator."""
        if not self.access_key_id_env and not self.secret_access_key_env:
            return None
        if not (self.access_key_id_env and self.secret_access_key_env):
            raise ValueError(f"copy {self.name}: give both access_key_id_env and "
                             "secret_access_key_env, or neither")
        key_id = os.environ.get(self.access_key_id_env)
        secret = os.environ.get(self.secret_access_key_env)
        missing = [n for n, v in ((self.access_key_id_env, key_id),
                                  (self.secret_access_key_env, secret)) if not v]
        if missing:
            raise ValueError(f"copy {self.name}: environment variable(s) "
                             f"{', '.join(missing)} not set")
        assert key_id and secret
        return key_id, secret


class AnomalyConfig(BaseModel):
    """When a new archive is suspect (SPEC 2.14), compared with the median of the target's
    previous good archives."""

    model_config = ConfigDict(extra="forbid")

    size_drop_pct: float = Field(50, gt=0, le=100, description=(
        "suspect when the dump is this many percent smaller than the median"))
    rows_drop_pct: float = Field(50, gt=0, le=100, description=(
        "suspect when a table lost this many percent of its rows"))
    min_rows: int = Field(1000, ge=0, description="tables smaller than this are not judged by rows")
