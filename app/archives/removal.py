"""Deleting an archive from every location (SPEC 2.15), and reading its Object Lock.

An archive lives in the primary storage and in each copy. Deleting it (``DELETE`` of an archive,
retention) goes in this order:

1. :func:`holdings`: its objects in every location. A location that cannot be listed refuses the
   deletion before anything is deleted (503 on the API, a failed step in retention), naming the
   location: an archive gone from the primary but whole in a copy would be shown by no listing,
   still cost storage, and could be brought back by reconciliation.
2. :func:`lock_end`: the latest S3 Object Lock end among those objects (one HEAD per object).
   While any object is locked nothing is deleted: ``DELETE`` answers 409 naming the date and
   retention keeps the archive with its ``locked_until``.
3. :func:`remove`: the copies first and the primary last, the manifest first in each location.
   Until the primary's manifest goes, the archive still lists as complete, so a deletion cut short
   (a copy failing half-way) is seen and done again by the next ``DELETE`` or retention run; the
   reverse order could leave a copy that outlives its archive. Finally its copy states go
   (:func:`app.archives.copy_state.forget`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from app.archives import copy_state
from app.backup import manifest as mf
from app.errors import StepFailed, StorageUnavailable
from app.integrations.storage import Location, StorageError, StorageRefused
from app.resources import Resources
from app.steps import Step

log = structlog.get_logger("pgvault.archives")

# How long archive detail waits for a locked location's lock (as holdings.LIST_TIMEOUT_S).
LOCK_READ_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Held:
    """One location's objects of one archive."""

    location: Location
    keys: list[str]


@dataclass(frozen=True)
class Lock:
    until: datetime
    location: str

    @property
    def iso(self) -> str:
        return iso(self.until)


def iso(moment: datetime) -> str:
    """``2026-12-30T10:00:00Z``: the form the API and job results show lock ends in."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _failed(step: Step, location: Location, backup_id: str, exc: StorageError) -> StepFailed:
    detail = f"archive {backup_id} in location {location.name}: {exc}"
    return StepFailed(step, detail) if isinstance(exc, StorageRefused) \
        else StorageUnavailable(step, detail)


async def holdings(services: Resources, target: str, backup_id: str) -> list[Held]:
    """The archive's objects in every location, primary first (empty where it has none)."""
    prefix = mf.archive_prefix(target, backup_id)

    async def one(location: Location) -> Held:
        try:
            objects = await location.storage.list_objects(prefix)
        except StorageError as exc:
            raise _failed(Step.LIST_ARCHIVE, location, backup_id, exc) from None
        return Held(location, [o.key for o in objects])

    return list(await asyncio.gather(*(one(loc) for loc in services.locations)))


def manifest_only_in_copies(held: list[Held], target: str, backup_id: str) -> str | None:
    """The first copy holding the archive's manifest when the primary holds none; else None."""
    key = mf.manifest_key(target, backup_id)
    if any(h.location.primary and key in h.keys for h in held):
        return None
    return next((h.location.name for h in held if not h.location.primary and key in h.keys),
                None)


@dataclass(frozen=True)
class Hold:
    """Why an archive must not be deleted now: ``why`` completes "… but <why>"."""

    why: str
    location: str
    locked_until: str | None = None


async def hold(held: list[Held], target: str, backup_id: str) -> Hold | None:
    """What keeps the archive from being deleted now, for ``DELETE`` and retention alike:

    - no manifest in the primary, but a copy holds one: the primary lost it (a manifest deleted
      by hand, a half-done repair), not a backup that died; deleting "the incomplete archive"
      everywhere would destroy the copy, and reconciliation repairs it;
    - an S3 Object Lock still ahead on one of its objects, in any location."""
    whole = manifest_only_in_copies(held, target, backup_id)
    if whole:
        return Hold(f"it has no manifest in the primary storage while location {whole} holds "
                    f"the archive: repair it first (POST /v1/targets/{target}/reconcile)",
                    location=whole)
    lock = await lock_end(held, backup_id)
    if lock is not None:
        return Hold(f"it is locked until {lock.iso} (S3 Object Lock in location "
                    f"{lock.location})", location=lock.location, locked_until=lock.iso)
    return None


async def lock_end(held: list[Held], backup_id: str) -> Lock | None:
    """The latest Object Lock end still ahead among the archive's objects, in any location;
    None when nothing is locked. A lock that cannot be read refuses like an outage."""
    found: Lock | None = None
    for h in held:
        if not h.keys:
            continue
        try:
            until = await h.location.storage.locked_until(h.keys)
        except StorageError as exc:
            raise _failed(Step.LIST_ARCHIVE, h.location, backup_id, exc) from None
        if until is not None and (found is None or until > found.until):
            found = Lock(until, h.location.name)
    return found


async def shown_lock(services: Resources, target: str, backup_id: str,
                     primary_keys: list[str]) -> datetime | None:
    """For archive detail: the lock end in the locations configured with ``object_lock_days``
    (no request at all without one); a location that cannot be read now (or within
    ``LOCK_READ_TIMEOUT_S``: a copy that does not answer must not hold the answer) is left
    out."""
    latest: datetime | None = None
    prefix = mf.archive_prefix(target, backup_id)

    async def read(location: Location) -> datetime | None:
        keys = primary_keys if location.primary else [
            o.key for o in await location.storage.list_objects(prefix)]
        return await location.storage.locked_until(keys) if keys else None

    for location in services.locations:
        if location.object_lock_days is None:
            continue
        try:
            until = await asyncio.wait_for(read(location), LOCK_READ_TIMEOUT_S)
        except (StorageError, TimeoutError) as exc:
            log.warning("lock_unread", location=location.name, backup_id=backup_id,
                        reason=str(exc) or type(exc).__name__)
            continue
        if until is not None and (latest is None or until > latest):
            latest = until
    return latest


async def remove(services: Resources, target: str, backup_id: str,
                 held: list[Held] | None = None) -> None:
    """Delete the archive everywhere (see the module's order); ``held``: its :func:`holdings`
    when the caller has just read them."""
    if held is None:
        held = await holdings(services, target, backup_id)
    key = mf.manifest_key(target, backup_id)
    for h in sorted(held, key=lambda h: h.location.primary):  # copies first, the primary last
        try:
            await h.location.storage.delete([key])
            if h.location.primary:
                services.manifests.forget(key)
            await h.location.storage.delete([k for k in h.keys if k != key])
        except StorageError as exc:
            raise _failed(Step.DELETE_ARCHIVE, h.location, backup_id, exc) from None
        log.info("archive_deleted", target=target, backup_id=backup_id,
                 location=h.location.name, objects=len(h.keys))
    async with services.pool.acquire() as conn:
        await copy_state.forget(conn, target, backup_id)
