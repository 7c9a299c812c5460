"""The storage interface and its error type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class StorageError(Exception):
    """A storage operation failed; the message names the operation and key, never credentials."""


class StorageRefused(StorageError):
    """Storage refused a key for good, not for now: a key that is not a plain relative path, or
    in a local folder a link, a folder or a device where an object should be. Retrying will
    not help; a human must look."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime
    # False: an entry pgvault cannot have written and never reads (a symbolic link, a device, a
    # FIFO in a local folder). Listed so that its archive shows as unusable instead of vanishing.
    usable: bool = True


def key_parts(key: str) -> list[str]:
    """The key's components; :class:`StorageError` for a key that could name something outside
    the archive folders: absolute, empty, with an empty, ``.`` or ``..`` component, a NUL or a
    backslash. S3 keys are checked too: some S3-compatible servers resolve ``..`` in the URL."""
    parts = key.split("/")
    if (not key or key.startswith("/") or "\\" in key or "\x00" in key
            or any(p in ("", ".", "..") for p in parts)):
        raise StorageRefused(f"storage key {key!r} is not a plain relative path")
    return parts


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str
    started: datetime


class Upload(Protocol):
    key: str
    upload_id: str

    async def write_part(self, data: bytes) -> None:
        """Queue one part (all but the last at least 5 MiB); may wait for a free slot."""

    async def complete(self) -> None:
        """Wait for queued parts and make the object visible under its key."""

    async def abort(self) -> None:
        """Discard every part; never raises (it runs during cleanup)."""


class Storage(Protocol):
    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise :class:`StorageError` unless the store can be read and written."""

    async def start_upload(self, key: str) -> Upload: ...

    async def put(self, key: str, data: bytes) -> None:
        """Write a small object in one request (manifests)."""

    async def get(self, key: str) -> bytes:
        """Read a small object; :class:`KeyError` when it does not exist."""

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Stream an object's bytes."""

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""

    async def delete(self, keys: list[str]) -> None: ...

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads started and neither completed nor aborted."""

    async def abort_upload(self, key: str, upload_id: str) -> None: ...

    async def check_lock(self) -> None:
        """:class:`StorageRefused` unless the store can hold objects under Object Lock."""

    async def locked_until(self, keys: list[str]) -> datetime | None:
        """The latest Object Lock end among these objects still ahead; None: none locked."""


class WithoutLocks:
    """The Object Lock half of :class:`Storage` for a store that cannot lock objects."""

    async def check_lock(self) -> None:
        raise StorageRefused("a local folder cannot lock objects (S3 Object Lock needs s3://)")

    async def locked_until(self, keys: list[str]) -> datetime | None:
        return None
