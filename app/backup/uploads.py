"""A backup's uploads: each object streamed through ``zstd | gpg`` into storage, hashed on the
way, its open multipart upload noted for the reaper; and the discard of what a failed backup
wrote.

A failure names its step (a :class:`~app.steps.Step`): the step itself when a process failed,
its upload step (``dump upload``) when storage did.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from app.config import Settings
from app.errors import StepFailed
from app.integrations import gpg, zstd
from app.integrations.process import Pipeline, PipelineError, Stage
from app.integrations.storage import Storage, StorageError, Upload
from app.integrations.streaming import Stored, pipeline_to_storage
from app.jobs.context import JobContext
from app.steps import UPLOAD_OF, Step


def encrypted_pipeline(first: Stage, settings: Settings) -> Pipeline:
    return Pipeline([first, *_encrypt_stages(settings)])


def _encrypt_stages(settings: Settings) -> list[Stage]:
    return [zstd.compress_stage(settings.zstd_level, settings.zstd_threads),
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


async def upload(ctx: JobContext, storage: Storage, step: Step, key: str,
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


async def upload_document(ctx: JobContext, storage: Storage, step: Step, key: str,
                          data: bytes) -> Stored:
    """A small document from memory through ``zstd | gpg`` into storage, as the dump goes: its
    plaintext never touches the disk."""
    pipeline = Pipeline(_encrypt_stages(ctx.services.settings), feed=True)

    async def fill() -> None:
        with contextlib.suppress(BrokenPipeError):  # zstd stopped: its exit code says why
            await pipeline.write(data)
        await pipeline.close_input()

    filling: asyncio.Task[None] | None = None
    try:
        try:
            await pipeline.start()
        except OSError as exc:
            raise StepFailed(step, f"cannot start {exc.filename or 'a tool'}: "
                                   f"{exc.strerror}") from None
        filling = asyncio.create_task(fill())
        return await upload(ctx, storage, step, key, pipeline, started=True)
    finally:
        await pipeline.close_input()  # the pipeline is done or killed by now: a blocked write ends
        if filling is not None:
            with contextlib.suppress(BaseException):
                await filling


async def discard(storage: Storage, written: list[Stored]) -> None:
    with contextlib.suppress(Exception):
        await storage.delete([s.key for s in written])


async def discard_manifest_first(storage: Storage, key: str, written: list[Stored]) -> None:
    with contextlib.suppress(Exception):
        await storage.delete([key])
    await discard(storage, written)
