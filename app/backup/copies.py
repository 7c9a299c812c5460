"""Where a backup writes (SPEC 2.15): the primary storage and every copy, the dump read once.

:class:`Places` is the backup's view of its locations: the primary, the copies still taking
every object, and why the others dropped out. A copy that fails is dropped at once (its upload
aborted, what it already holds of this archive deleted) and the backup goes on; the primary's
failure fails the backup, and its discard reaches every location. Manifests go to the primary
first (the archive exists from then on), then to each copy that holds every object.

After the backup each copy's state is recorded in ``archive_copies`` (``complete`` or
``missing`` with why), a ``copy.failed`` webhook is sent per copy that dropped out, and the job's
result names them (``copies``, ``warnings``). :func:`cleanup_locations` is the reaper's side:
a dead worker's open uploads and manifest-less objects, in every location.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from app.archives import copy_state
from app.backup import manifest
from app.errors import StepFailed
from app.integrations.storage import Location, Storage
from app.jobs.context import JobContext
from app.resources import Resources


@dataclass
class Places:
    primary: Location
    copies: list[Location]  # every configured copy, in configuration order
    dropped: dict[str, str] = field(default_factory=dict)  # copy name -> why
    written: list[str] = field(default_factory=list)  # keys complete in every live location

    @classmethod
    def of(cls, services: Resources) -> Places:
        primary, *copies = services.locations
        return cls(primary=primary, copies=copies)

    @property
    def live(self) -> list[Location]:
        """The primary, then each copy still taking every object."""
        return [self.primary, *(c for c in self.copies if c.name not in self.dropped)]

    @property
    def every(self) -> list[Location]:
        return [self.primary, *self.copies]

    def storages(self) -> dict[str, Storage]:
        return {loc.name: loc.storage for loc in self.live}

    async def drop(self, ctx: JobContext, name: str, why: str, *also: str) -> None:
        """The copy ``name`` failed: it takes nothing more of this archive, and what it holds
        of it is deleted now (``also``: keys beyond the objects already written)."""
        if name in self.dropped or name == self.primary.name:
            return
        self.dropped[name] = why
        ctx.log.warning("copy_dropped", location=name, detail=why)
        location = next(c for c in self.copies if c.name == name)
        await asyncio.shield(_delete(location.storage, [*also, *self.written]))

    async def discard(self, manifest_key: str | None = None) -> None:
        """The backup failed: delete what it wrote in every location (a manifest first, so
        an archive is never complete-looking and half gone)."""
        await asyncio.gather(*(_discard(loc.storage, self.written, manifest_key)
                               for loc in self.every))


async def _delete(storage: Storage, keys: list[str]) -> None:
    with contextlib.suppress(Exception):
        await storage.delete(keys)


async def _discard(storage: Storage, keys: list[str], manifest_key: str | None) -> None:
    if manifest_key is not None:
        await _delete(storage, [manifest_key])
    await _delete(storage, keys)


async def write_manifests(ctx: JobContext, places: Places, key: str, data: bytes) -> None:
    """The manifest in each copy that holds every object (the primary's is already written);
    a copy whose write fails is dropped. If this worker lost the job meanwhile, a reaper may
    have deleted the copies' objects (they had no manifest): their manifests go again."""
    copies = [c for c in places.live if not c.primary]
    if not copies:
        return

    async def put(location: Location) -> None:
        try:
            await location.storage.put(key, data)
        except Exception as exc:
            await places.drop(ctx, location.name, f"manifest write failed: {exc}", key)

    await asyncio.gather(*(put(c) for c in copies))
    try:
        await ctx.assert_lease()
    except StepFailed as exc:
        for location in [c for c in places.live if not c.primary]:
            await places.drop(ctx, location.name, f"lease not confirmed after the manifest: "
                              f"{exc}", key)
    except Exception as exc:  # cannot ask: proves nothing either way (as for the primary)
        ctx.log.warning("lease_unconfirmed_after_copy_manifests", error_type=type(exc).__name__)


async def conclude(ctx: JobContext, places: Places, backup_id: str) -> dict[str, Any]:
    """Record each copy's state of the archive and tell of the ones that failed: the result's
    ``copies`` and ``warnings``."""
    copies: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for location in places.copies:
        why = places.dropped.get(location.name)
        copies[location.name] = {"status": "missing" if why else "complete", "detail": why}
        if why:
            warnings.append(f"copy {location.name} is missing: {why}")
    try:
        if copies:
            async with ctx.services.pool.acquire() as conn:
                for name, state in copies.items():
                    await copy_state.record(conn, target=ctx.target, backup_id=backup_id,
                                            location=name, status=state["status"],
                                            detail=state["detail"])
    except Exception as exc:  # the archive stands; its copies show no state until reconciled
        ctx.log.warning("copy_states_not_recorded", error_type=type(exc).__name__)
        warnings.append("the copies' states could not be recorded: reconciliation will find "
                        "them")
    for name, why in places.dropped.items():
        ctx.services.notifier.emit("copy.failed", {
            "target": ctx.target, "backup_id": backup_id, "location": name, "detail": why,
            "summary": f"backup {backup_id} of {ctx.target} is missing from copy {name}: {why}"})
    return {"copies": copies, "warnings": warnings}


async def cleanup_locations(services: Resources, cleanup: dict[str, Any]) -> None:
    """Undo what a dead worker's backup left in every location: its open uploads and its
    manifest-less objects. Every location is tried; the first failure is raised after."""
    uploads: dict[str, Any] = dict(cleanup.get("uploads") or {})
    if cleanup.get("upload"):  # notes written before copies existed
        uploads.setdefault(services.locations[0].name, cleanup["upload"])
    prefix = cleanup.get("archive_prefix")
    failure: Exception | None = None
    for location in services.locations:
        try:
            upload = uploads.get(location.name)
            if upload:
                await location.storage.abort_upload(upload["key"], upload["upload_id"])
            if prefix:
                keys = [o.key for o in await location.storage.list_objects(prefix)]
                if not any(k.endswith(manifest.MANIFEST) for k in keys):
                    await location.storage.delete(keys)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
