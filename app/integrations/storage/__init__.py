"""Archive storage behind one small interface: S3 (aioboto3) or a local folder.

Keys are relative to the storage URL's prefix (``<target>/<backup_id>/<object>``). Uploads are
multipart and explicit: the caller completes an upload only after every producer exited 0, and
aborts it otherwise, so a truncated object never becomes visible under its final key.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from app.config import Settings
from app.integrations.storage.base import ObjectInfo, Storage, StorageError, StorageRefused, Upload

__all__ = ["ObjectInfo", "Storage", "StorageError", "StorageRefused", "Upload", "open_storage"]


async def open_storage(settings: Settings) -> Storage:
    """The storage the settings name; the caller closes it."""
    parts = urlsplit(settings.storage_url)
    if parts.scheme == "s3":
        from app.integrations.storage.s3 import S3Storage

        return await S3Storage.open(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            concurrency=settings.upload_concurrency,
        )
    from app.integrations.storage.file import FileStorage

    return FileStorage(parts.path)
