"""The archive catalogue, read from storage (the source of truth) and the manifests in it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from app import pagination
from app.archives.schemas import Archive, ArchiveDetail, ArchiveList, Verification
from app.audit import repository as audit_repo
from app.backup import manifest as mf
from app.config import BACKUP_ID_RE
from app.errors import Conflict, NotFound, StepFailed
from app.integrations.storage import ObjectInfo, StorageError
from app.jobs import repository as jobs_repo
from app.security import Principal

if TYPE_CHECKING:
    from app.lifespan import Services


MANIFEST_CACHE_MAX = 5000


async def load_manifest(services: Services, target: str, backup_id: str, *,
                        fresh: bool = False) -> dict[str, Any]:
    """The archive's manifest; :class:`NotFound` when there is none (incomplete or absent).

    Manifests never change, so listings use a per-process cache; ``fresh`` reads storage, for
    callers that must not act on an archive another replica deleted."""
    key = mf.manifest_key(target, backup_id)
    cached = services.manifests.get(key)
    if cached is not None and not fresh:
        return cached
    try:
        raw = await services.storage.get(key)
    except KeyError:
        raise NotFound(f"no complete archive {backup_id} for target {target}") from None
    except StorageError as exc:
        raise StepFailed("read manifest", str(exc)) from None
    try:
        doc: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise StepFailed("read manifest", f"manifest of {backup_id} is not valid JSON") from None
    if doc.get("backup_id") != backup_id or doc.get("target") != target:
        raise StepFailed("read manifest", f"the manifest under {key} names another archive")
    if len(services.manifests) >= MANIFEST_CACHE_MAX:
        services.manifests.clear()
    services.manifests[key] = doc
    return doc


async def _scan(services: Services, target: str) -> dict[str, list[ObjectInfo]]:
    try:
        objects = await services.storage.list_objects(f"{target}/")
    except StorageError as exc:
        raise StepFailed("list archives", str(exc)) from None
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for obj in objects:
        parts = obj.key.split("/")
        if len(parts) >= 3 and BACKUP_ID_RE.match(parts[1]):
            grouped[parts[1]].append(obj)
    return grouped


# Steps whose failure proves the archive broken; any other (storage unreachable, a worker lost,
# no room for a scratch database) says nothing about it.
DAMAGE_STEPS = frozenset({"checksum", "decrypt", "pg_restore --list", "compare"})


def _archive(target: str, backup_id: str, objects: list[ObjectInfo],
             doc: dict[str, Any] | None, verification: Verification | None) -> Archive:
    size = sum(o.size for o in objects if not o.key.endswith(mf.MANIFEST))
    # Complete: a manifest, and every object it lists present at its size (a manifest that
    # outlived its objects, or an object cut short, is no backup).
    stored = {o.key.split("/", 2)[-1]: o.size for o in objects}
    complete = doc is not None and all(
        stored.get(obj.get("key")) == obj.get("size_bytes") for obj in doc.get("objects") or [])
    return Archive(
        backup_id=backup_id, target=target, created_at=mf.backup_time(backup_id),
        finished_at=doc.get("finished_at") if doc else None,
        size_bytes=size, complete=complete,
        label=doc.get("label") if doc else None,
        job_id=doc.get("job_id") if doc else None,
        database_size_bytes=doc.get("database_size_bytes") if doc else None,
        verification=verification,
    )


async def _verifications(services: Services, target: str,
                         backup_ids: list[str]) -> dict[str, Verification]:
    async with services.pool.acquire() as conn:
        rows = await jobs_repo.last_verifications(conn, target, backup_ids, sorted(DAMAGE_STEPS))
    return {
        r["params"]["backup_id"]: Verification(
            status=r["status"], level=r["params"].get("level", "checksum"), job_id=r["id"],
            finished_at=r["finished_at"], summary=r["summary"], damaged=r["damaged"])
        for r in rows
    }


async def catalogue(services: Services, target: str) -> list[Archive]:
    """Every archive of the target, newest first, complete or not."""
    grouped = await _scan(services, target)
    ids = sorted(grouped, reverse=True)
    complete = [b for b in ids if any(o.key.endswith("/" + mf.MANIFEST) for o in grouped[b])]
    sem = asyncio.Semaphore(8)

    async def load(backup_id: str) -> tuple[str, dict[str, Any]]:
        async with sem:
            return backup_id, await load_manifest(services, target, backup_id)

    docs = dict(await asyncio.gather(*(load(b) for b in complete)))
    checks = await _verifications(services, target, ids)
    return [_archive(target, b, grouped[b], docs.get(b), checks.get(b)) for b in ids]


async def list_archives(services: Services, target: str, cursor: str | None,
                        limit: int) -> ArchiveList:
    after = pagination.decode(cursor, 1)
    archives = await catalogue(services, target)
    if after is not None:
        archives = [a for a in archives if a.backup_id < str(after[0])]
    page = archives[:limit]
    more = len(archives) > limit
    return ArchiveList(items=page,
                       next_cursor=pagination.encode([page[-1].backup_id]) if more else None)


async def get_archive(services: Services, target: str, backup_id: str) -> ArchiveDetail:
    grouped = await _scan(services, target)
    if backup_id not in grouped:
        raise NotFound(f"no archive {backup_id} for target {target}")
    doc: dict[str, Any] | None
    try:
        doc = await load_manifest(services, target, backup_id)
    except NotFound:
        doc = None
    checks = await _verifications(services, target, [backup_id])
    archive = _archive(target, backup_id, grouped[backup_id], doc, checks.get(backup_id))
    return ArchiveDetail(**archive.model_dump(), manifest=doc)


def is_good(archive: Archive) -> bool:
    """Complete, and not proven broken by its last verification."""
    return archive.complete and not (archive.verification and archive.verification.damaged)


@contextlib.asynccontextmanager
async def deletions_locked(services: Services, target: str) -> AsyncIterator[None]:
    """One deleter per target across replicas (a session advisory lock on the metadata
    database), so two deletions cannot together break the target's minimum."""
    async with services.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"pgvault-delete:{target}")
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))",
                               f"pgvault-delete:{target}")


async def delete_archive(services: Services, caller: Principal, target: str,
                         backup_id: str) -> None:
    """Delete one archive, unless that leaves fewer good archives than the target's minimum."""
    async with deletions_locked(services, target):
        await _delete_archive(services, caller, target, backup_id)


async def _delete_archive(services: Services, caller: Principal, target: str,
                          backup_id: str) -> None:
    async with services.pool.acquire() as conn:
        in_use = await jobs_repo.archives_in_use(conn, target)
    if backup_id in in_use:
        raise Conflict(f"archive {backup_id} is being read by job {in_use[backup_id]}",
                       job_id=str(in_use[backup_id]))
    services.manifests.clear()  # another replica may have deleted some: read storage afresh
    archives = await catalogue(services, target)
    archive = next((a for a in archives if a.backup_id == backup_id), None)
    if archive is None:
        raise NotFound(f"no archive {backup_id} for target {target}")
    minimum = services.settings.targets[target].retention_min_backups
    good = [a for a in archives if is_good(a)]
    if is_good(archive) and len(good) - 1 < minimum:
        async with services.pool.acquire() as conn:
            await audit_repo.insert(conn, actor=caller.name, action="archive.delete",
                                    target=target, outcome="refused",
                                    details={"backup_id": backup_id})
        raise Conflict(f"deleting {backup_id} would leave {len(good) - 1} good archive(s); "
                       f"target {target} keeps at least {minimum}")
    await remove_archive(services, target, backup_id)
    async with services.pool.acquire() as conn:
        await audit_repo.insert(conn, actor=caller.name, action="archive.delete", target=target,
                                outcome="deleted", details={"backup_id": backup_id})


async def remove_archive(services: Services, target: str, backup_id: str) -> None:
    """Manifest first: from that instant the archive is incomplete, never half-restorable."""
    key = mf.manifest_key(target, backup_id)
    objects = await services.storage.list_objects(mf.archive_prefix(target, backup_id))
    await services.storage.delete([key])
    services.manifests.pop(key, None)
    await services.storage.delete([o.key for o in objects if o.key != key])
