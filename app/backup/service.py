"""The backup command (SPEC 2.1), as a list of named steps.

1. connect: open a transaction on the target and export its snapshot; choose the pg_dump and
   pg_dumpall that fit the server's major (a clear failure when none is installed).
2. globals: ``pg_dumpall --globals-only --no-role-passwords | zstd | gpg`` -> upload.
3. dump: ``pg_dump -Fc -Z0 --snapshot | zstd -T0 | gpg --compress-algo none`` -> multipart
   upload, hashed on the way; meanwhile the manifest's facts and exact row counts are read in the
   same snapshot.
4. manifest: written last, only after every stage of every pipeline exited 0.

Any failure or cancellation kills the processes, aborts the open upload, deletes the objects
already written for this archive, and writes no manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from app.backup import facts, manifest
from app.config import Settings, TargetConfig
from app.errors import StepFailed
from app.integrations import gpg, pg_clients, pg_tools
from app.integrations.pg_clients import ToolVersions
from app.integrations.process import Pipeline, PipelineError, PipeWriter, Stage
from app.integrations.storage import Storage, StorageError, Upload
from app.integrations.streaming import Stored, pipeline_to_storage
from app.integrations.target_db import connect_target
from app.steps import UPLOAD_OF, Step

if TYPE_CHECKING:
    from app.jobs.runner import JobContext
    from app.lifespan import Services

_M = TypeVar("_M", bound=BaseModel)


def encrypted_pipeline(first: Stage, settings: Settings) -> Pipeline:
    return Pipeline([first, *_encrypt_stages(settings)])


def _encrypt_stages(settings: Settings) -> list[Stage]:
    return [pg_tools.zstd_compress_stage(settings.zstd_level, settings.zstd_threads),
            gpg.encrypt_stage(settings.gpg_home, settings.gpg_recipients)]


def _proc_wchar(pid: int) -> int | None:
    """Bytes a process has written so far (Linux ``/proc/<pid>/io``): pg_dump's progress."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


async def run_backup(ctx: JobContext) -> tuple[dict[str, Any], str]:
    services = ctx.services
    settings = services.settings
    target: TargetConfig = settings.targets[ctx.target]
    dsn = target.parsed_dsn
    storage = services.storage
    started = time.monotonic()
    created_at = datetime.now(UTC)
    backup_id = manifest.new_backup_id(created_at)
    prefix = manifest.archive_prefix(ctx.target, backup_id)
    written: list[Stored] = []

    await ctx.set_phase(Step.CONNECTING)
    # The snapshot's session idles in its transaction for the whole dump and counts big tables:
    # the role's own timeouts (managed services set them) must not end it.
    conn = await connect_target(dsn, settings={"statement_timeout": "0",
                                               "idle_in_transaction_session_timeout": "0"})
    try:
        # 1. Snapshot and server facts.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            server = await facts.server_facts(conn)
            try:
                server_major = server["server_version_num"] // 10000
                pg_dump = services.clients.choose("pg_dump", server_major)
                pg_dumpall = services.clients.choose("pg_dumpall", server_major)
            except pg_clients.NoFittingClient as exc:
                raise StepFailed(Step.CLIENT_PROGRAMS, str(exc)) from None
            tools = ToolVersions(pg_dump=pg_dump.version, pg_dumpall=pg_dumpall.version)
            await ctx.note_cleanup("archive_prefix", prefix)

            # 2. Globals (roles, memberships, tablespaces), without role passwords.
            await ctx.set_phase(Step.GLOBALS)
            written.append(await _upload(
                ctx, storage, Step.GLOBALS, prefix + manifest.GLOBALS_OBJECT,
                encrypted_pipeline(pg_tools.pg_dumpall_globals_stage(pg_dumpall, dsn), settings)))

            # 3. The database, and its facts in the same snapshot meanwhile.
            catalog = await facts.catalog_facts(conn, target.exclude_schemas)
            properties = await facts.database_properties(conn)
            await ctx.set_phase(Step.DUMP, bytes_total=server["database_size_bytes"])
            dump_stage = pg_tools.pg_dump_stage(
                pg_dump, dsn, snapshot=snapshot, lock_wait_timeout_s=settings.lock_wait_timeout_s,
                exclude_schemas=target.exclude_schemas)
            pipeline = encrypted_pipeline(dump_stage, settings)
            counting = asyncio.create_task(
                facts.count_rows(conn, catalog["tables"]) if target.row_counts
                else _no_counts(catalog["tables"]))
            try:
                written.append(await _upload(ctx, storage, Step.DUMP,
                                             prefix + manifest.DATABASE_OBJECT, pipeline))
                tables = await counting
            finally:
                if not counting.done():
                    counting.cancel()
                    with contextlib.suppress(BaseException):
                        await counting
            written.append(await _upload_document(
                ctx, storage, Step.DATABASE_PROPERTIES, prefix + manifest.PROPERTIES_OBJECT,
                json.dumps(properties).encode()))
    except BaseException:
        await asyncio.shield(_discard(storage, written))
        raise
    finally:
        await asyncio.shield(_close(conn))

    # 4. The manifest, last, and only while this worker still owns the job: a replica that
    # reaped it may already have deleted the objects.
    await ctx.set_phase(Step.MANIFEST)
    finished_at = datetime.now(UTC)
    doc = _manifest(ctx, settings, backup_id, created_at, finished_at, server,
                    {**catalog, "database_properties": properties}, tables, written, tools,
                    snapshot)
    key = manifest.manifest_key(ctx.target, backup_id)
    try:
        await ctx.assert_lease()
        await storage.put(key, manifest.dumps(doc))
        await _confirm_lease(ctx)
    except BaseException as exc:
        # The write may have landed even if it reported failure: manifest first, then objects.
        await asyncio.shield(_discard_manifest_first(storage, key, written))
        if isinstance(exc, (StorageError, OSError)):
            raise StepFailed(Step.MANIFEST, str(exc)) from None
        raise
    await ctx.note_cleanup("archive_prefix", None)
    services.manifests[manifest.manifest_key(ctx.target, backup_id)] = doc

    size = manifest.size_bytes(doc)
    duration = time.monotonic() - started
    result = {
        "backup_id": backup_id,
        "size_bytes": size,
        "database_size_bytes": server["database_size_bytes"],
        "duration_s": round(duration, 3),
        "tables": len(tables),
        "rows": sum(t["rows"] or 0 for t in tables),
        "objects": [{"key": s.key.removeprefix(prefix), "size_bytes": s.size_bytes,
                     "sha256": s.sha256} for s in written],
        "label": ctx.params.get("label"),
        "tools": tools.as_dict(),
    }
    summary = (f"backup {backup_id} of {ctx.target}: {_mb(size)} stored from a "
               f"{_mb(server['database_size_bytes'])} database in {duration:.1f} s")
    return result, summary


async def _confirm_lease(ctx: JobContext) -> None:
    """Still ours after the manifest write? If a replica reaped the job meanwhile (this worker
    cut off from the metadata database for a whole lease), it may have deleted the objects: the
    manifest must not stay to vouch for them (:class:`StepFailed`). A metadata database that
    cannot be asked proves nothing either way: the archive is whole, so it stays."""
    try:
        await ctx.assert_lease()
    except StepFailed:
        raise
    except Exception as exc:
        ctx.log.warning("lease_unconfirmed_after_manifest", error_type=type(exc).__name__)


async def _upload(ctx: JobContext, storage: Storage, step: Step, key: str,
                  pipeline: Pipeline, *, started: bool = False) -> Stored:
    """Stream ``pipeline`` into ``key``. ``started``: a pipeline fed from memory (a document):
    already running, and too small to report progress (the dump's stays the job's last)."""
    async def remember(upload: Upload) -> None:
        await ctx.note_cleanup("upload", {"key": upload.key, "upload_id": upload.upload_id})

    try:
        if not started:
            await pipeline.start()
    except OSError as exc:
        raise StepFailed(step, f"cannot start {exc.filename or 'a tool'}: {exc.strerror}") from None
    dumper = pipeline.pids[0]
    dumped = 0

    def progress(uploaded: int) -> None:
        # Once pg_dump has exited its counter is gone while the upload drains: keep its last
        # reading rather than fall back to the (compressed) upload count.
        nonlocal dumped
        dumped = _proc_wchar(dumper) or dumped
        ctx.progress(bytes_done=dumped or uploaded, bytes_uploaded=uploaded)

    try:
        stored = await pipeline_to_storage(
            pipeline, storage, key, part_size=ctx.services.settings.upload_part_size,
            on_start=remember, on_bytes=None if started else progress)
    except PipelineError as exc:
        raise StepFailed(step, str(exc)) from None
    except StorageError as exc:
        raise StepFailed(UPLOAD_OF[step], str(exc)) from None
    await ctx.note_cleanup("upload", None)
    return stored


async def _upload_document(ctx: JobContext, storage: Storage, step: Step, key: str,
                           data: bytes) -> Stored:
    """A small document from memory through ``zstd | gpg`` into storage, as the dump goes: its
    plaintext never touches the disk."""
    settings = ctx.services.settings
    feed_r, feed_w = os.pipe()
    feed = PipeWriter(feed_w, "document")
    pipeline = Pipeline(_encrypt_stages(settings), stdin=feed_r)

    async def fill() -> None:
        with contextlib.suppress(BrokenPipeError):  # zstd stopped: its exit code says why
            await feed.write(data)
        await feed.close()

    filling: asyncio.Task[None] | None = None
    try:
        try:
            await pipeline.start()
        except OSError as exc:
            raise StepFailed(step, f"cannot start {exc.filename or 'a tool'}: "
                                   f"{exc.strerror}") from None
        finally:
            os.close(feed_r)
        filling = asyncio.create_task(fill())
        return await _upload(ctx, storage, step, key, pipeline, started=True)
    finally:
        await feed.close()  # the pipeline is done or killed by now: a blocked write ends
        if filling is not None:
            with contextlib.suppress(BaseException):
                await filling


async def _no_counts(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"schema": t["schema"], "name": t["name"], "rows": None} for t in tables]


async def _discard(storage: Storage, written: list[Stored]) -> None:
    with contextlib.suppress(Exception):
        await storage.delete([s.key for s in written])


async def _discard_manifest_first(storage: Storage, key: str, written: list[Stored]) -> None:
    with contextlib.suppress(Exception):
        await storage.delete([key])
    await _discard(storage, written)


async def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), 5)


def _manifest(ctx: JobContext, settings: Settings, backup_id: str, created_at: datetime,
              finished_at: datetime, server: dict[str, Any], catalog: dict[str, Any],
              tables: list[dict[str, Any]], written: list[Stored], tools: ToolVersions,
              snapshot: str) -> manifest.Manifest:
    prefix = manifest.archive_prefix(ctx.target, backup_id)
    kinds = {manifest.GLOBALS_OBJECT: "globals", manifest.DATABASE_OBJECT: "database",
             manifest.PROPERTIES_OBJECT: "database_properties"}
    objects = []
    for stored in written:
        key = stored.key.removeprefix(prefix)
        objects.append(manifest.ArchiveObject(key=key, kind=kinds[key],
                                              size_bytes=stored.size_bytes,
                                              sha256=stored.sha256, encrypted=True))
    target = settings.targets[ctx.target]
    # Every field given, so every key is written (None as null), as always.
    return manifest.Manifest(
        format_version=manifest.FORMAT_VERSION,
        backup_id=backup_id,
        target=ctx.target,
        label=ctx.params.get("label"),
        job_id=ctx.job_id,
        requested_by=ctx.requested_by,
        created_at=created_at,
        finished_at=finished_at,
        server_version=server["server_version"],
        server_version_num=server["server_version_num"],
        pg_dump_version=tools.pg_dump,
        tools=tools,
        database=server["database"],
        database_size_bytes=server["database_size_bytes"],
        database_encoding=server["encoding"],
        database_collate=server["collate"],
        database_ctype=server["ctype"],
        dump_format="custom",
        compression="zstd",
        compression_level=settings.zstd_level,
        encryption=manifest.Encryption(format="openpgp",
                                       recipients=list(settings.gpg_recipients)),
        snapshot=snapshot,
        exclude_schemas=list(target.exclude_schemas),
        row_counts="exact" if target.row_counts else "none",
        objects=objects,
        tables=_each(manifest.TableRows, tables),
        materialized_views=_each(manifest.MaterializedView, catalog["materialized_views"]),
        subscriptions=_each(manifest.Subscription, catalog["subscriptions"]),
        extensions=_each(manifest.Extension, catalog["extensions"]),
        schemas=_each(manifest.Schema, catalog["schemas"]),
        schemaless_objects=_each(manifest.SchemalessObject, catalog["schemaless_objects"]),
        invalid_indexes=_each(manifest.IndexRef, catalog["invalid_indexes"]),
        not_valid_constraints=_each(manifest.ConstraintRef, catalog["not_valid_constraints"]),
        database_properties=manifest.PropertiesSummary.model_validate(
            facts.properties_summary(catalog["database_properties"])),
    )


def _each(model: type[_M], rows: list[dict[str, Any]]) -> list[_M]:
    return [model.model_validate(r) for r in rows]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def cleanup_backup(services: Services, cleanup: dict[str, Any], target: str) -> None:
    """Undo what a dead worker's backup left: its open upload and its manifest-less objects."""
    upload = cleanup.get("upload")
    if upload:
        await services.storage.abort_upload(upload["key"], upload["upload_id"])
    prefix = cleanup.get("archive_prefix")
    if prefix:
        keys = [o.key for o in await services.storage.list_objects(prefix)]
        if not any(k.endswith(manifest.MANIFEST) for k in keys):
            await services.storage.delete(keys)
