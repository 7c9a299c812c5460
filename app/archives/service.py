"""The archive catalogue, read from storage (the source of truth) and the manifests in it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import structlog
from pydantic import ValidationError

from app import pagination
from app.archives import copy_view, holdings, proof_sql, removal, reviews
from app.archives.schemas import (
    Anomaly,
    Archive,
    ArchiveDetail,
    ArchiveList,
    SuspectCleared,
    Verification,
)
from app.audit import repository as audit_repo
from app.backup import manifest as mf
from app.config import BACKUP_ID_RE
from app.errors import Conflict, NotFound, StepFailed, StorageUnavailable
from app.integrations.storage import ObjectInfo, StorageError, StorageRefused
from app.integrations.storage.base import key_parts
from app.jobs import repository as jobs_repo
from app.resources import Resources
from app.security import Principal
from app.steps import DAMAGE_STEPS, Step

log = structlog.get_logger("pgvault.archives")


class ArchiveUnreadable(Conflict):
    """The archive's manifest cannot be trusted: never restored, never counted as good."""


def _storage_failed(step: str, detail: str, exc: StorageError) -> StepFailed:
    """A refusal for good stays a failed step (500); anything else is an outage (503)."""
    if isinstance(exc, StorageRefused):
        return StepFailed(step, detail)
    return StorageUnavailable(step, detail)


def _check_manifest(raw: bytes, target: str, backup_id: str) -> mf.Manifest:
    """The parsed manifest; :class:`ArchiveUnreadable` with the reason when it is not one this
    archive can be restored from."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ArchiveUnreadable(f"the manifest of {backup_id} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ArchiveUnreadable(f"the manifest of {backup_id} is not a JSON object")
    if doc.get("backup_id") != backup_id or doc.get("target") != target:
        raise ArchiveUnreadable(
            f"the manifest in {target}/{backup_id}/ names another archive "
            f"({str(doc.get('target'))[:64]!r}, {str(doc.get('backup_id'))[:64]!r}): "
            "copied or moved by hand?")
    try:
        manifest = mf.Manifest.model_validate(doc)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"][:1]) for e in exc.errors()})
        raise ArchiveUnreadable(f"the manifest of {backup_id} has malformed fields: "
                                f"{', '.join(fields)}") from None
    for obj in manifest.objects:
        try:
            key_parts(obj.key)
        except StorageError:
            raise ArchiveUnreadable(f"the manifest of {backup_id} lists an object outside its "
                                    f"archive folder ({obj.key[:100]!r})") from None
    return manifest


async def load_manifest(services: Resources, target: str, backup_id: str, *,
                        fresh: bool = False) -> mf.Manifest:
    """The archive's manifest; :class:`NotFound` when there is none (incomplete or absent),
    :class:`ArchiveUnreadable` (409) when it cannot be trusted, :class:`StorageUnavailable` (503)
    when storage cannot be read.

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
    except StorageRefused as exc:
        raise ArchiveUnreadable(str(exc)) from None
    except StorageError as exc:
        raise _storage_failed(Step.READ_MANIFEST, str(exc), exc) from None
    doc = _check_manifest(raw, target, backup_id)
    services.manifests.put(key, doc)
    return doc


async def usable_manifest(services: Resources, target: str, backup_id: str) -> mf.Manifest:
    """The manifest of an archive a restore or verification may read, fresh from storage:
    :class:`NotFound` without one, :class:`ArchiveUnreadable` (409) when it cannot be trusted
    or its objects are not files pgvault wrote (links)."""
    doc = await load_manifest(services, target, backup_id, fresh=True)
    try:
        objects = await services.storage.list_objects(mf.archive_prefix(target, backup_id))
    except StorageError as exc:
        raise _storage_failed(Step.LIST_ARCHIVE, str(exc), exc) from None
    verdicts = await _copy_verdicts(services, target, {backup_id: objects}, {backup_id: doc},
                                    patient=True)
    archive = _archive(target, backup_id, objects, doc, None, copies=verdicts.get(backup_id))
    if archive.reason is not None:
        raise ArchiveUnreadable(f"archive {backup_id} is unreadable: {archive.reason}")
    return doc


async def _scan(services: Resources, target: str) -> dict[str, list[ObjectInfo]]:
    try:
        objects = await services.storage.list_objects(f"{target}/")
    except StorageError as exc:
        raise _storage_failed(Step.LIST_ARCHIVES, str(exc), exc) from None
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for obj in objects:
        parts = obj.key.split("/")
        if len(parts) >= 3 and BACKUP_ID_RE.match(parts[1]) and _dated(parts[1]):
            grouped[parts[1]].append(obj)
    return grouped


def _dated(backup_id: str) -> bool:
    """A folder named like a backup id but with an impossible time (month 13) is not one
    pgvault made; it is left out rather than failing the whole listing."""
    try:
        mf.backup_time(backup_id)
    except ValueError:
        return False
    return True


async def _copy_verdicts(services: Resources, target: str, grouped: dict[str, list[ObjectInfo]],
                         docs: dict[str, mf.Manifest | str | None], *,
                         patient: bool = False) -> dict[str, holdings.Verdict]:
    """For archives with a manifest that the primary holds short: whether a copy holds them
    whole (see :mod:`app.archives.holdings`); nothing is asked of copies otherwise."""
    found = {}
    down: dict[str, str] | None = None if patient else {}  # see holdings.judge
    for backup_id, doc in docs.items():
        if services.copies and isinstance(doc, mf.Manifest) \
                and holdings.short_objects(grouped[backup_id], doc):
            verdict = await holdings.judge(services.copies, target, backup_id, doc,
                                           grouped[backup_id], down)
            if verdict is not None:
                found[backup_id] = verdict
    return found


def _archive(target: str, backup_id: str, objects: list[ObjectInfo],
             doc: mf.Manifest | str | None, verification: Verification | None,
             review: SuspectCleared | None = None,
             copies: holdings.Verdict | None = None,
             states: copy_view.Copies | None = None) -> Archive:
    """``doc``: the manifest, None when there is none, or why it is unreadable; ``review``: its
    suspect mark cleared by an operator; ``copies``: for an archive the primary holds short, what
    the copies say; ``states``: each copy location's recorded state."""
    size = sum(o.size for o in objects if o.usable and not o.key.endswith(mf.MANIFEST))
    foreign = [o.key.split("/", 2)[-1] for o in objects if not o.usable]
    reason = doc if isinstance(doc, str) else copies.reason if copies else None
    if reason is None and foreign:
        reason = (f"{', '.join(foreign[:3])} {'is' if len(foreign) == 1 else 'are'} not a "
                  "regular file (a link?): not written by pgvault")
    manifest = doc if isinstance(doc, mf.Manifest) else None
    # Complete: a manifest, and every object it lists present at its size (a manifest that
    # outlived its objects, or an object cut short, is no backup).
    # Or held whole by a copy, when the primary's are missing or short (degraded).
    degraded = copies.degraded if copies and reason is None else None
    complete = reason is None and manifest is not None and (
        not holdings.short_objects(objects, manifest) or degraded is not None)
    status = "unreadable" if reason else "complete" if complete else "incomplete"
    return Archive(
        backup_id=backup_id, target=target, created_at=mf.backup_time(backup_id),
        finished_at=manifest.finished_at if manifest else None,
        size_bytes=size, complete=complete, status=status, reason=reason,
        label=manifest.label if manifest else None,
        job_id=manifest.job_id if manifest else None,
        database_size_bytes=manifest.database_size_bytes if manifest else None,
        verification=verification, degraded=degraded,
        copies=states or {},
        **_suspicion(manifest, review),
    )


def _suspicion(manifest: mf.Manifest | None, review: SuspectCleared | None) -> dict[str, Any]:
    """Suspect: the manifest names anomalies (SPEC 2.14) and no operator cleared them."""
    found = [Anomaly.model_validate(a.model_dump()) for a in manifest.anomalies] if manifest else []
    return {"suspect": bool(found) and review is None, "anomalies": found,
            "suspect_cleared": review if found else None}


async def _manifest_or_reason(services: Resources, target: str,
                              backup_id: str) -> mf.Manifest | str | None:
    """The manifest, None when there is none, or why it cannot be used: one bad archive shows
    as unreadable instead of failing the whole listing."""
    try:
        return await load_manifest(services, target, backup_id)
    except NotFound:
        return None
    except (ArchiveUnreadable, StepFailed) as exc:
        return exc.detail


async def _verifications(services: Resources, target: str, backup_ids: list[str],
                         ) -> tuple[dict[str, Verification], dict[str, copy_view.Copies]]:
    """Each archive's last verification, and its copies' states (one connection)."""
    async with services.pool.acquire() as conn:
        rows = await proof_sql.last_verifications(conn, target, backup_ids,
                                                  [str(s) for s in sorted(DAMAGE_STEPS)])
        copies = await copy_view.read(conn, services.settings, target, backup_ids)
    found: dict[str, Verification] = {}
    for r in rows:
        try:
            found[r["params"]["backup_id"]] = Verification(
                status=r["status"], level=r["params"].get("level", "checksum"), job_id=r["id"],
                finished_at=r["finished_at"], at=r["finished_at"],
                duration_s=_took(r["result"], r["run_s"]),
                summary=r["summary"], damaged=r["damaged"])
        except ValidationError:
            # A damaged job record must not take the target's listing down: its archive shows
            # no verification, as if never verified, which is the safe reading.
            log.warning("verification_record_unreadable", target=target, job_id=str(r["id"]))
    return found, copies


async def _reviews(services: Resources, target: str,
                   backup_ids: list[str]) -> dict[str, SuspectCleared]:
    async with services.pool.acquire() as conn:
        rows = await reviews.cleared(conn, target, backup_ids)
    return {b: SuspectCleared(by=r["cleared_by"], at=r["cleared_at"], reason=r["reason"])
            for b, r in rows.items()}


def _took(result: object, run_s: float | None) -> float | None:
    """The job's own duration figure, else its start-to-end time."""
    took = result.get("duration_s") if isinstance(result, dict) else None
    if isinstance(took, int | float) and not isinstance(took, bool):
        with contextlib.suppress(OverflowError):  # a record's JSON may say anything
            if math.isfinite(seconds := float(took)):
                return round(seconds, 3)
    return None if run_s is None else round(run_s, 3)


async def catalogue(services: Resources, target: str) -> list[Archive]:
    """Every archive of the target, newest first, complete or not."""
    grouped = await _scan(services, target)
    ids = sorted(grouped, reverse=True)
    complete = [b for b in ids if any(o.key.endswith("/" + mf.MANIFEST) for o in grouped[b])]
    sem = asyncio.Semaphore(8)

    async def load(backup_id: str) -> tuple[str, mf.Manifest | str | None]:
        async with sem:
            return backup_id, await _manifest_or_reason(services, target, backup_id)

    docs = dict(await asyncio.gather(*(load(b) for b in complete)))
    verdicts = await _copy_verdicts(services, target, grouped, docs)
    checks, states = await _verifications(services, target, ids)
    cleared = await _reviews(services, target, complete)
    return [_archive(target, b, grouped[b], docs.get(b), checks.get(b), review=cleared.get(b),
                     copies=verdicts.get(b), states=states.get(b))
            for b in ids]


async def list_archives(services: Resources, target: str, cursor: str | None,
                        limit: int) -> ArchiveList:
    after = pagination.decode(cursor, 1)
    archives = await catalogue(services, target)
    if after is not None:
        archives = [a for a in archives if a.backup_id < str(after[0])]
    page = archives[:limit]
    more = len(archives) > limit
    return ArchiveList(items=page,
                       next_cursor=pagination.encode([page[-1].backup_id]) if more else None)


async def get_archive(services: Resources, target: str, backup_id: str) -> ArchiveDetail:
    grouped = await _scan(services, target)
    if backup_id not in grouped:
        raise NotFound(f"no archive {backup_id} for target {target}")
    doc = await _manifest_or_reason(services, target, backup_id)
    verdicts = await _copy_verdicts(services, target, grouped, {backup_id: doc})
    checks, states = await _verifications(services, target, [backup_id])
    cleared = await _reviews(services, target, [backup_id])
    archive = _archive(target, backup_id, grouped[backup_id], doc, checks.get(backup_id),
                       review=cleared.get(backup_id), copies=verdicts.get(backup_id),
                       states=states.get(backup_id))
    locked = await removal.shown_lock(services, target, backup_id,
                                      [o.key for o in grouped[backup_id]])
    return ArchiveDetail(**archive.model_dump(),
                         manifest=doc.as_stored()
                         if isinstance(doc, mf.Manifest) and archive.reason is None else None,
                         locked_until=locked)


def is_good(archive: Archive) -> bool:
    """Complete, not proven broken by its last verification, and not suspect (SPEC 2.14: a
    suspect archive counts again once an operator clears it)."""
    return (archive.complete and not (archive.verification and archive.verification.damaged)
            and not archive.suspect)


@contextlib.asynccontextmanager
async def deletions_locked(services: Resources, target: str) -> AsyncIterator[None]:
    """One deleter per target across replicas (a session advisory lock on the metadata
    database), so two deletions cannot together break the target's minimum."""
    async with services.pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"pgvault-delete:{target}")
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))",
                               f"pgvault-delete:{target}")


async def delete_archive(services: Resources, caller: Principal, target: str,
                         backup_id: str) -> None:
    """Delete one archive, unless that leaves fewer good archives than the target's minimum."""
    async with deletions_locked(services, target):
        await _delete_archive(services, caller, target, backup_id)


async def _delete_archive(services: Resources, caller: Principal, target: str,
                          backup_id: str) -> None:
    async with services.pool.acquire() as conn:
        in_use = await jobs_repo.archives_in_use(conn, target)
        writer = await jobs_repo.active_backup(conn, target)
    if backup_id in in_use:
        raise Conflict(f"archive {backup_id} is being read by job {in_use[backup_id]}",
                       job_id=str(in_use[backup_id]))
    # A running backup's archive looks incomplete; deleting its first objects would not stop it
    # from writing its manifest and succeeding over an archive that cannot be restored.
    if writer is not None and (writer["cleanup"] or {}).get(
            "archive_prefix") == mf.archive_prefix(target, backup_id):
        raise Conflict(f"archive {backup_id} is being written by job {writer['id']}",
                       job_id=str(writer["id"]))
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
    held = await removal.holdings(services, target, backup_id)
    kept = await removal.hold(held, target, backup_id)
    if kept is not None:
        async with services.pool.acquire() as conn:
            await audit_repo.insert(conn, actor=caller.name, action="archive.delete",
                                    target=target, outcome="refused",
                                    details={"backup_id": backup_id,
                                             "locked_until": kept.locked_until,
                                             "location": kept.location})
        raise Conflict(f"archive {backup_id} cannot be deleted now: {kept.why}")
    await removal.remove(services, target, backup_id, held)
    async with services.pool.acquire() as conn:
        await audit_repo.insert(conn, actor=caller.name, action="archive.delete", target=target,
                                outcome="deleted", details={"backup_id": backup_id})


async def remove_archive(services: Resources, target: str, backup_id: str) -> None:
    """Delete the archive in every location, manifest first in each (:mod:`.removal`)."""
    await removal.remove(services, target, backup_id)
