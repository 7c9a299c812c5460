"""Moving archive objects: a pipeline's output into a multipart upload.

It hashes on the way (SHA-256, in a worker thread: hashlib releases the GIL, and the event loop
stays free). Memory is bounded by the part size times the upload concurrency, whatever the size of
the database.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.integrations.process import Pipeline
from app.integrations.storage import Storage, Upload

PARTS_PER_STEP = 1000


@dataclass(frozen=True)
class Stored:
    key: str
    size_bytes: int
    sha256: str


OnUpload = Callable[[Upload], Awaitable[None]]


async def pipeline_to_storage(pipeline: Pipeline, storage: Storage, key: str, *, part_size: int,
                              on_start: OnUpload | None = None,
                              on_bytes: Callable[[int], None] | None = None) -> Stored:
    """Upload the pipeline's output as ``key``; complete only if every stage exited 0.

    On any failure or cancellation the pipeline is killed and the upload aborted, then the error
    propagates: nothing is left under ``key`` and no upload stays open.
    """
    upload: Upload | None = None
    try:
        upload = await storage.start_upload(key)
        if on_start is not None:
            await on_start(upload)
        digest = hashlib.sha256()
        size = 0
        parts = 0
        # S3 allows 10,000 parts: the part size doubles every 1,000 parts (8 MiB parts cover
        # 8 GB, then 16 MiB the next 16 GB, ...), so any dump fits while small ones stay cheap.
        while part := await pipeline.read_exactly(part_size << (parts // PARTS_PER_STEP)):
            parts += 1
            await asyncio.to_thread(digest.update, part)
            await upload.write_part(part)
            size += len(part)
            if on_bytes is not None:
                on_bytes(size)
        await pipeline.wait()
        await upload.complete()
        return Stored(key, size, digest.hexdigest())
    except BaseException:
        await asyncio.shield(_cleanup(pipeline, upload))
        raise


async def _cleanup(pipeline: Pipeline, upload: Upload | None) -> None:
    await pipeline.kill()
    if upload is not None:
        await upload.abort()
