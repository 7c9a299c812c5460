"""Archive storage behind one small interface: S3 (aioboto3) or a local folder.

Keys are relative to the storage URL's prefix (``<target>/<backup_id>/<object>``). Uploads are
multipart and explicit: the caller completes an upload only after every producer exited 0, and
aborts it otherwise, so a truncated object never becomes visible under its final key.

A :class:`Location` is one place archives are kept: the primary storage (``PGVAULT_STORAGE_URL``)
or one of the copies (``PGVAULT_COPIES``, SPEC 2.15); each holds complete, self-describing
archives under the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import structlog

from app.config import ConfigError, Settings
from app.config_models import CopyConfig
from app.integrations.storage.base import ObjectInfo, Storage, StorageError, StorageRefused, Upload

__all__ = ["PRIMARY", "Location", "ObjectInfo", "Storage", "StorageError", "StorageRefused",
           "Upload", "check_locks", "check_locks_at_start", "open_copies", "open_location",
           "open_storage"]

log = structlog.get_logger("pgvault.storage")

PRIMARY = "primary"


@dataclass(frozen=True)
class Location:
    name: str  # "primary" or the copy's name
    url: str  # the storage URL (no credentials in it: they are named by variables)
    storage: Storage
    object_lock_days: int | None = None
    object_lock_mode: Literal["governance", "compliance"] = "governance"

    @property
    def primary(self) -> bool:
        return self.name == PRIMARY


async def open_location(*, name: str, url: str, endpoint_url: str | None, region: str,
                        concurrency: int, credentials: tuple[str, str] | None = None,
                        object_lock_days: int | None = None,
                        object_lock_mode: Literal["governance", "compliance"] = "governance",
                        ) -> Location:
    """The location the URL names; the caller closes its storage."""
    parts = urlsplit(url)
    storage: Storage
    if parts.scheme == "s3":
        from app.integrations.storage.s3 import S3Storage

        storage = await S3Storage.open(
            bucket=parts.netloc, prefix=parts.path.strip("/"), endpoint_url=endpoint_url,
            region=region, concurrency=concurrency, credentials=credentials,
            object_lock_days=object_lock_days, object_lock_mode=object_lock_mode)
    else:
        from app.integrations.storage.file import FileStorage

        storage = FileStorage(parts.path)
    return Location(name=name, url=url, storage=storage, object_lock_days=object_lock_days,
                    object_lock_mode=object_lock_mode)


async def open_storage(settings: Settings) -> Storage:
    """The primary storage the settings name; the caller closes it."""
    return (await open_primary(settings)).storage


async def open_primary(settings: Settings) -> Location:
    return await open_location(
        name=PRIMARY, url=settings.storage_url, endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region, concurrency=settings.upload_concurrency,
        object_lock_days=settings.object_lock_days, object_lock_mode=settings.object_lock_mode)


async def open_copy(settings: Settings, copy: CopyConfig) -> Location:
    return await open_location(
        name=copy.name, url=copy.url, endpoint_url=copy.s3_endpoint_url,
        region=copy.s3_region or settings.s3_region, concurrency=settings.upload_concurrency,
        credentials=copy.credentials(), object_lock_days=copy.object_lock_days,
        object_lock_mode=copy.object_lock_mode)


async def open_copies(settings: Settings) -> list[Location]:
    """Every copy location, in configuration order; the caller closes their storages."""
    opened: list[Location] = []
    try:
        for copy in settings.copies:
            opened.append(await open_copy(settings, copy))
    except BaseException:
        for location in opened:
            await location.storage.close()
        raise
    return opened


def _lock_setting(location: Location) -> str:
    return ("PGVAULT_OBJECT_LOCK_DAYS" if location.primary
            else f"PGVAULT_COPIES (copy {location.name}) object_lock_days")


async def check_locks(locations: list[Location]) -> None:
    """:class:`ConfigError`, one line per location, when a location with ``object_lock_days``
    cannot lock objects (its bucket has no Object Lock configuration, or it is a folder): its
    archives would be deletable while the operator believes them immutable. A store that cannot
    be asked now (an outage) is logged and left to the writes themselves, which then fail
    loudly: start-up does not wait for storage (``/readyz`` reports it)."""
    problems = []
    for location in locations:
        if location.object_lock_days is None:
            continue
        try:
            await location.storage.check_lock()
        except StorageRefused as exc:
            problems.append(
                f"storage location {location.name} ({location.url}): {_lock_setting(location)} "
                f"is set but {exc}: create the bucket with Object Lock enabled, or unset it")
        except StorageError as exc:
            log.warning("object_lock_unchecked", location=location.name, reason=str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


async def check_locks_at_start(settings: Settings) -> None:
    """:func:`check_locks` for a server's preflight: opens the locations and closes them."""
    if settings.object_lock_days is None and not any(
            c.object_lock_days is not None for c in settings.copies):
        return
    locations = [await open_primary(settings)]
    try:
        locations += await open_copies(settings)
        await check_locks(locations)
    finally:
        for location in locations:
            await location.storage.close()
