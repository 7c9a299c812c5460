"""S3 (or an S3-compatible endpoint) through aioboto3.

Multipart uploads are driven by hand rather than through ``upload_fileobj``: that helper completes
the upload when its input ends, even if the producer died, and its default transfer settings buffer
hundreds of MB. Here at most ``concurrency`` parts are in flight (plus the one being filled by the
caller), the upload completes only when the caller says so, and :meth:`S3Upload.abort` discards it.
Credentials come from the standard AWS variables and never appear in an error message: botocore
errors are reduced to their code and the operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from app.integrations.storage import s3_lock
from app.integrations.storage.base import (
    ObjectInfo,
    PendingUpload,
    StorageError,
    StorageRefused,
    key_parts,
)

# S3 error codes and botocore failures in words (the code stays, for searching the S3 docs).
_CODE_WORDS = {
    "AccessDenied": "access denied to these credentials",
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key id is unknown to the endpoint",
    "SignatureDoesNotMatch": "the secret access key does not match the key id",
    "NoSuchUpload": "the multipart upload no longer exists",
    "SlowDown": "the endpoint asks to slow down",
    "InternalError": "the endpoint had an internal error",
    "ServiceUnavailable": "the endpoint is unavailable",
}


def _describe(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "error")
        words = _CODE_WORDS.get(code)
        return StorageError(f"S3 {what} failed: {words} ({code})" if words
                            else f"S3 {what} failed: error code {code}")
    if isinstance(exc, EndpointConnectionError):
        words = "cannot connect to the S3 endpoint"
    elif isinstance(exc, (ConnectTimeoutError, ReadTimeoutError)):
        words = "the S3 endpoint did not answer in time"
    elif isinstance(exc, NoCredentialsError):
        words = "no S3 credentials were found (AWS_ACCESS_KEY_ID and friends)"
    else:
        words = f"a client error ({type(exc).__name__})"
    return StorageError(f"S3 {what} failed: {words}")


def _read_failure(exc: Exception, key: str) -> Exception:
    """:class:`KeyError` for an object that does not exist (the storage interface's "absent"),
    else the failure in words."""
    if isinstance(exc, ClientError) \
            and exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
        return KeyError(key)
    return _describe(exc, f"read of {key}")


def _plain(key: str) -> bool:
    try:
        key_parts(key)
    except StorageError:
        return False
    return True


class _PartBody(io.BytesIO):
    """A part's bytes as the file botocore wants, without a copy: a BytesIO shares the bytes it
    was given until ``getbuffer()`` is called, which aiohttp does (to learn the size), making a
    private 8 MiB copy of every part in flight; this one answers with a view of those bytes."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


class S3Upload:
    def __init__(self, client: Any, bucket: str, key: str, full_key: str, upload_id: str,
                 concurrency: int, lock: dict[str, Any] | None = None) -> None:
        self.key = key
        self._lock = lock  # the Object Lock parameters the upload was started with
        self.upload_id = upload_id
        self._client = client
        self._bucket = bucket
        self._full_key = full_key
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: list[asyncio.Task[dict[str, Any]]] = []

    async def write_part(self, data: bytes) -> None:
        # Fail fast: a part that already failed makes every later part pointless.
        for task in self._tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await self._slots.acquire()
        number = len(self._tasks) + 1
        self._tasks.append(asyncio.create_task(self._upload_part(number, data)))

    async def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        try:
            extra = ({"ContentMD5": await asyncio.to_thread(s3_lock.content_md5, data)}
                     if self._lock else {})
            resp = await self._client.upload_part(
                Bucket=self._bucket, Key=self._full_key, UploadId=self.upload_id,
                PartNumber=number, Body=_PartBody(data), **extra,
            )
            return {"PartNumber": number, "ETag": resp["ETag"]}
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"upload of part {number} of {self.key}") from None
        finally:
            self._slots.release()

    async def complete(self) -> None:
        parts = await asyncio.gather(*self._tasks)
        try:
            await self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._full_key, UploadId=self.upload_id,
                MultipartUpload={"Parts": list(parts)},
            )
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"completion of {self.key}") from None
        if self._lock:
            try:
                await s3_lock.ensure_retention(self._client, self._bucket, self._full_key,
                                               self._lock)
            except (BotoCoreError, ClientError) as exc:
                raise _describe(exc, f"Object Lock retention of {self.key}") from None

    async def abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._full_key, UploadId=self.upload_id)


class S3Storage:
    def __init__(self, client: Any, stack: contextlib.AsyncExitStack, bucket: str, prefix: str,
                 concurrency: int, *, object_lock_days: int | None = None,
                 object_lock_mode: str = "governance") -> None:
        self._client = client
        self._stack = stack
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self._concurrency = concurrency
        # SPEC 2.15: every object written with an Object Lock retention of this many days.
        self.object_lock_days = object_lock_days
        self.object_lock_mode = object_lock_mode

    @classmethod
    async def open(cls, *, bucket: str, prefix: str, endpoint_url: str | None, region: str,
                   concurrency: int, credentials: tuple[str, str] | None = None,
                   object_lock_days: int | None = None,
                   object_lock_mode: str = "governance") -> S3Storage:
        # Credentials of a copy come from the variables its configuration names; None: the
        # standard AWS variables and files, as for the primary.
        session = (aioboto3.Session(aws_access_key_id=credentials[0],
                                    aws_secret_access_key=credentials[1])
                   if credentials else aioboto3.Session())
        config = Config(
            region_name=region,
            retries={"max_attempts": 4, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=max(10, concurrency * 2),
            s3={"addressing_style": "path"} if endpoint_url else None,
            # No per-part CRC trailers (aws-chunked encoding, computed in Python): every object
            # is already hashed with SHA-256 for the manifest and checked on every restore.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.client("s3", endpoint_url=endpoint_url, config=config))
        return cls(client, stack, bucket, prefix, concurrency,
                   object_lock_days=object_lock_days, object_lock_mode=object_lock_mode)

    async def close(self) -> None:
        await self._stack.aclose()

    def _full(self, key: str) -> str:
        # Keys travel in the request URL, where some S3-compatible servers and proxies resolve
        # ``..``: a key that is not a plain relative path could name another target's object.
        key_parts(key)
        return self.prefix + key

    async def check(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"access to bucket {self.bucket}") from None

    async def start_upload(self, key: str) -> S3Upload:
        lock = self._lock_params()
        try:
            resp = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), **(lock or {}))
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"start of upload {key}") from None
        return S3Upload(self._client, self.bucket, key, self._full(key), resp["UploadId"],
                        self._concurrency, lock)

    def _lock_params(self) -> dict[str, Any] | None:
        if self.object_lock_days is None:
            return None
        return s3_lock.lock_params(self.object_lock_days, self.object_lock_mode)

    async def put(self, key: str, data: bytes) -> None:
        lock = self._lock_params()
        extra = {**lock, "ContentMD5": s3_lock.content_md5(data)} if lock else {}
        try:
            await self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data,
                                          **extra)
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"write of {key}") from None

    async def get(self, key: str) -> bytes:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            async with resp["Body"] as body:
                data: bytes = await body.read()
                return data
        except (BotoCoreError, ClientError) as exc:
            raise _read_failure(exc, key) from None

    async def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        try:
            resp = await self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            body = resp["Body"]
            try:
                while chunk := await body.read(chunk_size):
                    yield chunk
            finally:
                body.close()
        except (BotoCoreError, ClientError) as exc:
            raise _read_failure(exc, key) from None

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].startswith(self.prefix):
                        continue
                    key = obj["Key"][len(self.prefix):]
                    found.append(ObjectInfo(key, obj["Size"], obj["LastModified"],
                                            usable=_plain(key)))
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"listing of {prefix or '/'}") from None
        return found

    async def delete(self, keys: list[str]) -> None:
        # Keys travel in the request body here, where nothing resolves ``..``: an odd key
        # that a listing found under the prefix can still be deleted.
        entries: list[dict[str, str]] = [{"Key": self.prefix + k} for k in keys if k]
        if self.object_lock_days is not None and entries:
            # A versioned (locked) bucket: every version goes, or the delete fails (s3_lock).
            try:
                entries = await s3_lock.versions(self._client, self.bucket,
                                                 [e["Key"] for e in entries])
            except (BotoCoreError, ClientError) as exc:
                raise _describe(exc, "listing of versions to delete") from None
        for start in range(0, len(entries), 1000):
            batch = entries[start:start + 1000]
            try:
                resp = await self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise _describe(exc, "delete") from None
            if errors := resp.get("Errors"):
                codes = sorted({str(e.get("Code")) for e in errors})
                raise StorageError(f"S3 delete failed for {len(errors)} object(s) "
                                   f"({', '.join(codes)}; Object Lock still holding them?)"
                                   if self.object_lock_days is not None else
                                   f"S3 delete failed for {len(errors)} object(s) "
                                   f"({', '.join(codes)})")

    async def check_lock(self) -> None:
        """:class:`StorageRefused` when the bucket has no Object Lock configuration."""
        try:
            enabled = await s3_lock.bucket_lock_enabled(self._client, self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, f"reading the Object Lock configuration of {self.bucket}") \
                from None
        if not enabled:
            raise StorageRefused(f"bucket {self.bucket} has no Object Lock configuration")

    async def locked_until(self, keys: list[str]) -> datetime | None:
        """The latest Object Lock end among these objects that is still ahead; None when none
        is locked now. One HEAD per object (a missing object is not locked)."""
        slots = asyncio.Semaphore(8)

        async def one(key: str) -> datetime | None:
            async with slots:
                try:
                    head = await self._client.head_object(Bucket=self.bucket,
                                                          Key=self.prefix + key)
                except (BotoCoreError, ClientError) as exc:
                    failure = _read_failure(exc, key)
                    if isinstance(failure, KeyError):
                        return None
                    raise failure from None
                return s3_lock.retain_until(head)

        ends = [u for u in await asyncio.gather(*(one(k) for k in keys if _plain(k)))
                if u is not None]
        now = datetime.now(UTC)
        return max((u for u in ends if u > now), default=None)

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for up in page.get("Uploads", []):
                    found.append(PendingUpload(up["Key"][len(self.prefix):], up["UploadId"],
                                               up["Initiated"]))
        except (BotoCoreError, ClientError) as exc:
            raise _describe(exc, "listing of uploads") from None
        return found

    async def abort_upload(self, key: str, upload_id: str) -> None:
        if not _plain(key):
            return  # not one pgvault started, and its key is unsafe in a URL: left alone
        with contextlib.suppress(BotoCoreError, ClientError):
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
