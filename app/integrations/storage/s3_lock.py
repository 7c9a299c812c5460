"""S3 Object Lock (SPEC 2.15): what :class:`~app.integrations.storage.s3.S3Storage` sends and reads.

- Writing: a location with ``object_lock_days`` writes every object (multipart uploads and
  single-request puts, manifests included) with ``ObjectLockMode`` (GOVERNANCE or COMPLIANCE)
  and ``ObjectLockRetainUntilDate`` = now + days, fixed when the object's write starts. S3
  requires a ``Content-MD5`` (or a checksum header) on every request that carries object data to
  a locked object; pgvault sends ``Content-MD5`` (a plain header every S3-compatible server
  knows), computed in a worker thread for upload parts.
- Some S3-compatible servers (moto's among them) accept the lock parameters of
  CreateMultipartUpload and drop them. After completing a multipart upload pgvault reads the
  object's retention back (one HEAD) and, when it is missing or shorter than asked, sets it with
  PutObjectRetention: an object of a locked location is never left unlocked silently.
- Reading: :func:`retain_until` reads ``ObjectLockRetainUntilDate`` from a HEAD answer.
- Deleting: Object Lock requires bucket versioning, where a plain delete only adds a delete
  marker and leaves the (locked, still billed) version behind. In a locked location pgvault
  deletes every version of each key (:func:`versions`), so storage is really freed once the lock
  has ended, and a still-locked version makes the delete fail instead of hiding the object.
- Start-up: :func:`bucket_lock_enabled` reads the bucket's Object Lock configuration.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

# Error codes that mean "this bucket has no Object Lock configuration".
NO_LOCK_CODES = ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound")


def lock_params(days: int, mode: str, now: datetime | None = None) -> dict[str, Any]:
    """The request parameters that lock an object for ``days`` from ``now``."""
    until = (now or datetime.now(UTC)).replace(microsecond=0) + timedelta(days=days)
    return {"ObjectLockMode": mode.upper(), "ObjectLockRetainUntilDate": until}


def content_md5(data: bytes) -> str:
    """Base64 MD5 of the body, the Content-MD5 header that locked writes require."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def retain_until(head: dict[str, Any]) -> datetime | None:
    """The object's lock end from a HeadObject answer; None when it has no retention."""
    until = head.get("ObjectLockRetainUntilDate")
    if isinstance(until, datetime):
        return until if until.tzinfo else until.replace(tzinfo=UTC)
    return None


async def ensure_retention(client: Any, bucket: str, full_key: str,
                           params: dict[str, Any]) -> None:
    """Set the retention ``params`` ask for unless the object already holds it (see module)."""
    head = await client.head_object(Bucket=bucket, Key=full_key)
    until = retain_until(head)
    wanted: datetime = params["ObjectLockRetainUntilDate"]
    if until is not None and until >= wanted and head.get("ObjectLockMode") == \
            params["ObjectLockMode"]:
        return
    await client.put_object_retention(
        Bucket=bucket, Key=full_key,
        Retention={"Mode": params["ObjectLockMode"], "RetainUntilDate": wanted})


async def bucket_lock_enabled(client: Any, bucket: str) -> bool:
    """True when the bucket has Object Lock enabled; other failures are raised."""
    try:
        resp = await client.get_object_lock_configuration(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in NO_LOCK_CODES:
            return False
        raise
    config = resp.get("ObjectLockConfiguration") or {}
    return bool(config.get("ObjectLockEnabled") == "Enabled")


async def versions(client: Any, bucket: str, full_keys: list[str]) -> list[dict[str, str]]:
    """Every version and delete marker of these keys, as DeleteObjects entries. One listing of
    the keys' common prefix (they are one archive's objects)."""
    wanted = set(full_keys)
    first, last = min(wanted), max(wanted)  # an S3 prefix: characters, not path components
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b),
                min(len(first), len(last)))
    prefix = first[:size]
    found: list[dict[str, str]] = []
    paginator = client.get_paginator("list_object_versions")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
            if entry["Key"] in wanted:
                found.append({"Key": entry["Key"], "VersionId": entry["VersionId"]})
    return found
