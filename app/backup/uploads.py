"""A backup's uploads: each object streamed through ``zstd | gpg`` into every location at once
(the primary and each copy still in, :class:`~app.backup.copies.Places`), hashed on the way, its
open multipart uploads noted for the reaper. A copy that fails drops out; the primary's failure
fails the step.

A failure names its step (a :class:`~app.steps.Step`): the step itself when a process failed,
its upload step (``dump upload``) when storage did.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from app.backup.copies import Places
from app.config import Settings
from app.errors import StepFailed
from app.integrations import gpg, zstd
from app.integrations.process import Pipeline, PipelineError, Stage
from app.integrations.storage import StorageError, Upload
from app.integrations.streaming import Stored, pipeline_to_storages
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


async def upload(ctx: JobContext, places: Places, step: Step, key: str,
                 pipeline: Pipeline, *, started: bool = False) -> Stored:
    """Stream ``pipeline`` into ``key`` in every live location. ``started``: a pipeline fed from
    memory (a document): already running, and too small to report progress (the dump's stays
    the job's last)."""
    async def remember(opened: dict[str, Upload]) -> None:
        await ctx.note_cleanup("uploads", {name: {"key": u.key, "upload_id": u.upload_id}
                                           for name, u in opened.items()})

    async def drop(name: str, why: str) -> None:
        # ``key`` too: an upload that completed before its failure (its lock not set, its
        # answer lost) left the object whole there, under no manifest.
        await places.drop(ctx, name, f"{UPLOAD_OF[step]} of {key.rsplit('/', 1)[-1]}: {why}",
                          key)

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
        stored = await pipeline_to_storages(
            pipeline, places.storages(), key, required=places.primary.name,
            part_size=ctx.services.settings.upload_part_size, on_start=remember,
            on_bytes=None if started else progress, on_drop=drop)
    except PipelineError as exc:
        raise StepFailed(step, str(exc)) from None
    except StorageError as exc:
        raise StepFailed(UPLOAD_OF[step], str(exc)) from None
    await ctx.note_cleanup("uploads", None)
    places.written.append(key)
    return stored


async def upload_document(ctx: JobContext, places: Places, step: Step, key: str,
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
        return await upload(ctx, places, step, key, pipeline, started=True)
    finally:
        await pipeline.close_input()  # the pipeline is done or killed by now: a blocked write ends
        if filling is not None:
            with contextlib.suppress(BaseException):
                await filling

