"""The reconciliation job (SPEC 2.15): every archive, in every location, checked and mended.

For each archive with a manifest -- the primary's, or a copy's when the primary has none -- each
location (the primary, then every copy) is found:

- ``complete``: the manifest and every object it lists, at its size (with ``deep``: each object
  read back and its SHA-256 equal to the manifest's, and the location's manifest listing the same
  objects);
- ``missing``: nothing of the archive there;
- ``incomplete``: some object (or the manifest) absent, or shorter than the manifest says;
- ``damaged``: an object of another size (longer), or (``deep``) whose SHA-256 differs.

What is absent or damaged is copied from a location that holds it intact: streamed and hashed on
the way, written only once size and SHA-256 equal the manifest's (a source that does not verify
is refused and the next tried), the manifest last. A good object is never overwritten: only an
object found absent or damaged is written. Each repair runs under the target's deletion lock
and re-reads the reference manifest first, so a deletion (retention, ``DELETE``) that finished
meanwhile is not undone. States are recorded in ``archive_copies`` (the primary's too, under
``primary``). An archive a running backup is writing is left alone, as are archives whose
primary manifest cannot be trusted (a human decides; the catalogue shows them unreadable).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.archives import copy_state, holdings
from app.archives.copy_state import CopyStatus
from app.archives.service import ArchiveUnreadable, _check_manifest, deletions_locked
from app.backup import manifest as mf
from app.config import BACKUP_ID_RE
from app.integrations.storage import Location, ObjectInfo, StorageError
from app.jobs import repository as jobs_repo
from app.jobs.context import JobContext
from app.steps import Step

CHUNK = 4 << 20


class Refused(Exception):
    """A source's object did not verify while it was copied: nothing was written."""


@dataclass
class _Found:
    """One location's state of one archive."""

    status: CopyStatus = "complete"
    bad: list[str] = field(default_factory=list)  # object keys to copy here
    manifest: bool = True  # the location's manifest is present and right
    problems: list[str] = field(default_factory=list)
    intact: set[str] = field(default_factory=set)  # object keys verified by hash (deep)

    def worse(self, status: CopyStatus, problem: str) -> None:
        order: list[CopyStatus] = ["complete", "incomplete", "damaged"]
        if self.status != "missing" and order.index(status) > order.index(self.status):
            self.status = status
        self.problems.append(problem)

    @property
    def detail(self) -> str | None:
        return "; ".join(self.problems[:5]) if self.problems else None


@dataclass
class _Reference:
    doc: mf.Manifest
    raw: bytes
    location: Location


async def run_reconcile(ctx: JobContext) -> tuple[dict[str, Any], str]:
    deep = bool(ctx.params.get("deep"))
    locations = ctx.services.locations
    await ctx.set_phase(Step.CHECK_LOCATIONS)
    listings: dict[str, dict[str, list[ObjectInfo]] | str] = {}
    for location in locations:
        try:
            listings[location.name] = _group(
                await location.storage.list_objects(f"{ctx.target}/"))
        except StorageError as exc:
            listings[location.name] = str(exc)
    busy = await _being_written(ctx)
    ids = sorted({b for grouped in listings.values() if isinstance(grouped, dict)
                  for b, objs in grouped.items() if _has_manifest(objs)} - busy)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    counts = {"repaired": 0, "unrepaired": 0}
    io = Io(lambda read, written: ctx.progress(bytes_done=read, bytes_uploaded=written))
    for backup_id in ids:
        ctx.alive()  # each archive is progress (a shallow check of sound ones moves no bytes)
        ref = await _reference(ctx, locations, listings, backup_id)
        if ref is None:
            continue
        report[backup_id] = await _reconcile_archive(ctx, io, deep, ref, listings, counts)
    result = {"deep": deep, "archives": report, "checked": len(report), **counts}
    summary = (f"{'deep ' if deep else ''}reconcile of {ctx.target}: {len(report)} archive(s) "
               f"in {len(locations)} location(s), {counts['repaired']} repaired, "
               f"{counts['unrepaired']} left broken")
    return result, summary


class Io:
    """Bytes read and written, reported (as the job's progress) after each change."""

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report
        self.read = 0
        self.written = 0

    def add(self, *, read: int = 0, written: int = 0) -> None:
        self.read += read
        self.written += written
        self.report(self.read, self.written)


def _group(objects: list[ObjectInfo]) -> dict[str, list[ObjectInfo]]:
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for obj in objects:
        parts = obj.key.split("/")
        if len(parts) >= 3 and BACKUP_ID_RE.match(parts[1]):
            grouped[parts[1]].append(obj)
    return grouped


def _has_manifest(objects: list[ObjectInfo]) -> bool:
    return any(o.usable and o.key.endswith("/" + mf.MANIFEST) for o in objects)


async def _being_written(ctx: JobContext) -> set[str]:
    async with ctx.services.pool.acquire() as conn:
        running = await jobs_repo.active_backup(conn, ctx.target)
    prefix = (running["cleanup"] or {}).get("archive_prefix", "") if running else ""
    return {prefix.split("/")[1]} if prefix.count("/") >= 2 else set()


async def _reference(ctx: JobContext, locations: list[Location],
                     listings: dict[str, Any], backup_id: str) -> _Reference | None:
    """The manifest every location is held to: the primary's; a copy's when the primary has
    none. None when the primary's cannot be trusted (left to a human) or none can be read."""
    key = mf.manifest_key(ctx.target, backup_id)
    for location in locations:
        grouped = listings[location.name]
        if not isinstance(grouped, dict) or not _has_manifest(grouped.get(backup_id, [])):
            continue
        try:
            raw = await location.storage.get(key)
            return _Reference(_check_manifest(raw, ctx.target, backup_id), raw, location)
        except (KeyError, StorageError, ArchiveUnreadable) as exc:
            ctx.log.warning("reconcile_manifest_unusable", backup_id=backup_id,
                            location=location.name, error=str(exc))
            if location.primary:
                return None
    return None


async def _reconcile_archive(ctx: JobContext, io: Io, deep: bool, ref: _Reference,
                             listings: dict[str, Any],
                             counts: dict[str, int]) -> dict[str, dict[str, Any]]:
    if ctx.phase != Step.CHECK_LOCATIONS:
        await ctx.set_phase(Step.CHECK_LOCATIONS)
    found: dict[str, _Found | str] = {}
    for location in ctx.services.locations:
        grouped = listings[location.name]
        if isinstance(grouped, str):
            found[location.name] = f"could not be listed: {grouped}"
        else:
            found[location.name] = await _assess(ctx, io, deep, ref, location,
                                                 grouped.get(ref.doc.backup_id, []))
    entries: dict[str, dict[str, Any]] = {}
    for location in ctx.services.locations:
        state = found[location.name]
        if isinstance(state, str):
            entries[location.name] = {"found": "missing", "repaired": False, "detail": state}
            counts["unrepaired"] += 1
            continue
        repaired, detail = False, state.detail
        if state.status != "complete":
            problem = await _repair(ctx, io, ref, location, state, found)
            repaired = problem is None
            detail = (f"repaired: {detail}" if repaired
                      else f"{detail}; not repaired: {problem}")
            counts["repaired" if repaired else "unrepaired"] += 1
        entries[location.name] = {"found": state.status, "repaired": repaired, "detail": detail}
        async with ctx.services.pool.acquire() as conn:
            await copy_state.record(conn, target=ctx.target, backup_id=ref.doc.backup_id,
                                    location=location.name,
                                    status="complete" if repaired else state.status,
                                    detail=detail)
    return entries


async def _assess(ctx: JobContext, io: Io, deep: bool, ref: _Reference, location: Location,
                  objects: list[ObjectInfo]) -> _Found:
    prefix = mf.archive_prefix(ctx.target, ref.doc.backup_id)
    stored = holdings.stored_sizes(objects)
    state = _Found()
    if not stored:
        return _Found(status="missing", bad=[o.key for o in ref.doc.objects], manifest=False,
                      problems=["no object of the archive"])
    for obj in ref.doc.objects:
        size = stored.get(obj.key)
        if size is None:
            state.worse("incomplete", f"{obj.key} missing")
        elif size < obj.size_bytes:
            state.worse("incomplete", f"{obj.key} short ({size} of {obj.size_bytes} bytes)")
        elif size != obj.size_bytes:
            state.worse("damaged", f"{obj.key} is {size} bytes, the manifest says "
                                   f"{obj.size_bytes}")
        elif deep:
            digest = await _hash(io, location, prefix + obj.key)
            if digest != obj.sha256:
                state.worse("damaged", f"{obj.key} SHA-256 {digest[:12]}... differs from the "
                                       "manifest's")
            else:
                state.intact.add(obj.key)
                continue
        else:
            continue
        state.bad.append(obj.key)
    if mf.MANIFEST not in stored:
        state.manifest = False
        state.worse("incomplete", "manifest missing")
    elif deep and location is not ref.location:
        try:
            theirs = _check_manifest(await location.storage.get(prefix + mf.MANIFEST),
                                     ctx.target, ref.doc.backup_id)
            same = _listing(theirs) == _listing(ref.doc)
        except (KeyError, StorageError, ArchiveUnreadable):
            same = False
        if not same:
            state.manifest = False
            state.worse("damaged", "manifest differs from the reference")
    return state


def _listing(doc: mf.Manifest) -> list[tuple[str, int, str]]:
    return sorted((o.key, o.size_bytes, o.sha256) for o in doc.objects)


async def _hash(io: Io, location: Location, key: str) -> str:
    digest = hashlib.sha256()
    try:
        async for chunk in location.storage.iter_chunks(key, CHUNK):
            await asyncio.to_thread(digest.update, chunk)
            io.add(read=len(chunk))
    except (KeyError, StorageError):
        return "unreadable"
    return digest.hexdigest()


async def _repair(ctx: JobContext, io: Io, ref: _Reference, location: Location,
                  state: _Found, found: dict[str, _Found | str]) -> str | None:
    """Copy what the location lacks from intact locations, the manifest last; None when done,
    else why not."""
    await ctx.set_phase(Step.REPAIR)
    target, backup_id = ctx.target, ref.doc.backup_id
    prefix = mf.archive_prefix(target, backup_id)
    entries = {o.key: o for o in ref.doc.objects}
    async with deletions_locked(ctx.services, target):
        try:  # deleted meanwhile? then it stays deleted
            await ref.location.storage.get(mf.manifest_key(target, backup_id))
        except (KeyError, StorageError) as exc:
            return f"the reference manifest in {ref.location.name} is gone or unreadable ({exc})"
        if (conflict := await _own_archive(ref, location)) is not None:
            return conflict
        for key in state.bad:
            sources = _sources(ctx.services.locations, location, key, found)
            refusals = []
            for source in sources:
                try:
                    await copy_object(io, source, location, prefix + key, entries[key],
                                      part=ctx.services.settings.upload_part_size)
                    break
                except Refused as exc:
                    refusals.append(f"{source.name}: {exc}")
                except StorageError as exc:
                    refusals.append(f"{source.name} -> {location.name}: {exc}")
            else:
                return (f"no location holds {key} intact"
                        + (f" ({'; '.join(refusals)})" if refusals else ""))
        if not state.manifest:
            try:
                await location.storage.put(mf.manifest_key(target, backup_id), ref.raw)
            except StorageError as exc:
                return f"manifest: {exc}"
            io.add(written=len(ref.raw))
    ctx.log.info("reconcile_repaired", backup_id=backup_id, location=location.name,
                 objects=len(state.bad))
    return None


async def _own_archive(ref: _Reference, location: Location) -> str | None:
    """Why the location must not be written: it holds its own manifest of this archive, listing
    other objects (sizes, hashes) than the reference. Its objects may be exactly what that
    manifest says: which of the two archives is the right one is not pgvault's to guess, and
    overwriting would destroy the other. None when it has no such manifest (or an unreadable
    one, which vouches for nothing)."""
    if location is ref.location:
        return None
    try:
        raw = await location.storage.get(mf.manifest_key(ref.doc.target, ref.doc.backup_id))
        theirs = _check_manifest(raw, ref.doc.target, ref.doc.backup_id)
    except KeyError:
        return None
    except ArchiveUnreadable:
        return None
    except StorageError as exc:
        return f"its manifest could not be read ({exc})"
    if _listing(theirs) == _listing(ref.doc):
        return None
    return (f"it holds its own manifest of this archive, listing other objects than "
            f"{ref.location.name}'s: nothing overwritten, a human decides which is right")


def _sources(locations: list[Location], dest: Location, key: str,
             found: dict[str, _Found | str]) -> list[Location]:
    """Locations that may hold ``key`` intact, those whose hash was checked first."""
    states = {name: s for name, s in found.items() if isinstance(s, _Found)}
    fits = [loc for loc in locations if loc is not dest
            and loc.name in states and key not in states[loc.name].bad]
    return sorted(fits, key=lambda loc: key not in states[loc.name].intact)


async def copy_object(io: Io, source: Location, dest: Location, key: str,
                      entry: mf.ArchiveObject, *, part: int) -> None:
    """Stream ``key`` from ``source`` into ``dest`` (in one request below ``part`` bytes, else a
    multipart upload of parts of at least ``part``), made visible only if its size and SHA-256
    are the manifest's (:class:`Refused` otherwise, and nothing is written)."""
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray()
    upload = await dest.storage.start_upload(key) if entry.size_bytes >= part else None
    try:
        try:
            async for chunk in source.storage.iter_chunks(key, CHUNK):
                size += len(chunk)
                if size > entry.size_bytes:
                    raise Refused(f"{entry.key} is longer than the manifest's "
                                   f"{entry.size_bytes} bytes")
                await asyncio.to_thread(digest.update, chunk)
                io.add(read=len(chunk))
                buffer += chunk
                if upload is not None and len(buffer) >= part:
                    await upload.write_part(bytes(buffer))
                    io.add(written=len(buffer))
                    buffer.clear()
        except KeyError:
            raise Refused(f"{entry.key} is missing") from None
        if size != entry.size_bytes or digest.hexdigest() != entry.sha256:
            raise Refused(f"{entry.key} ({size} bytes) does not match the manifest's size and "
                           "SHA-256")
        if upload is None:
            await dest.storage.put(key, bytes(buffer))
        else:
            if buffer:
                await upload.write_part(bytes(buffer))
            await upload.complete()
        io.add(written=len(buffer))
    except BaseException:
        if upload is not None:
            await asyncio.shield(upload.abort())
        raise
