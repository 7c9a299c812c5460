"""Moving archive objects: a pipeline's output into multipart uploads, one or several at once.

It hashes on the way (SHA-256, in a worker thread: hashlib releases the GIL, and the event loop
stays free). The output is read once and each part handed to every destination's upload (the same
bytes object, not a copy): memory is bounded by the part size times the upload concurrency per
destination, whatever the size of the database.

One destination is *required* (the primary storage): its failure fails the transfer, and every
destination's upload is aborted. Any other destination that fails (a copy, SPEC 2.15) is dropped:
its upload aborted, ``on_drop`` told why, and the transfer goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Mapping
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
# Every destination's open upload, by name, once all have started.
OnUploads = Callable[[dict[str, Upload]], Awaitable[None]]
# A destination dropped (name, why): its upload is already aborted.
OnDrop = Callable[[str, str], Awaitable[None]]


async def pipeline_to_storage(pipeline: Pipeline, storage: Storage, key: str, *, part_size: int,
                              on_start: OnUpload | None = None,
                              on_bytes: Callable[[int], None] | None = None) -> Stored:
    """Upload the pipeline's output as ``key``; complete only if every stage exited 0.

    On any failure or cancellation the pipeline is killed and the upload aborted, then the error
    propagates: nothing is left under ``key`` and no upload stays open.
    """
    async def started(uploads: dict[str, Upload]) -> None:
        if on_start is not None:
            await on_start(uploads["only"])

    return await pipeline_to_storages(pipeline, {"only": storage}, key, required="only",
                                      part_size=part_size, on_start=started, on_bytes=on_bytes)


async def pipeline_to_storages(pipeline: Pipeline, storages: Mapping[str, Storage], key: str, *,
                               required: str, part_size: int, on_start: OnUploads | None = None,
                               on_bytes: Callable[[int], None] | None = None,
                               on_drop: OnDrop | None = None) -> Stored:
    """Upload the pipeline's output as ``key`` in every storage (the ``required`` one first);
    complete only if every stage exited 0.

    A failure of the required storage, of the pipeline, or a cancellation kills the pipeline,
    aborts every open upload and deletes ``key`` wherever it was already completed, then
    propagates. Another storage's failure drops that storage only (``on_drop``).
    """
    transfer = _Transfer(storages, key, required, on_drop)
    try:
        await transfer.start()
        if on_start is not None:
            await on_start(dict(transfer.uploads))
        digest = hashlib.sha256()
        size = 0
        parts = 0
        # S3 allows 10,000 parts: the part size doubles every 1,000 parts (8 MiB parts cover
        # 8 GB, then 16 MiB the next 16 GB, ...), so any dump fits while small ones stay cheap.
        while part := await pipeline.read_exactly(part_size << (parts // PARTS_PER_STEP)):
            parts += 1
            await asyncio.to_thread(digest.update, part)
            await transfer.write(part)
            size += len(part)
            if on_bytes is not None:
                on_bytes(size)
        await pipeline.wait()
        await transfer.complete()
        return Stored(key, size, digest.hexdigest())
    except BaseException:
        await asyncio.shield(_cleanup(pipeline, transfer))
        raise


class _Transfer:
    """The open uploads of one object, the required one first."""

    def __init__(self, storages: Mapping[str, Storage], key: str, required: str,
                 on_drop: OnDrop | None) -> None:
        self.storages = {required: storages[required],
                         **{n: s for n, s in storages.items() if n != required}}
        self.key = key
        self.required = required
        self.on_drop = on_drop
        self.uploads: dict[str, Upload] = {}
        self.completed: list[str] = []

    async def start(self) -> None:
        for name, storage in self.storages.items():
            try:
                self.uploads[name] = await storage.start_upload(self.key)
            except Exception as exc:
                await self._failed(name, exc)

    async def write(self, part: bytes) -> None:
        # One after the other: each waits for a free slot in its own upload, so the slowest
        # destination sets the pace and no destination holds more than its few parts.
        for name, upload in list(self.uploads.items()):
            try:
                await upload.write_part(part)
            except Exception as exc:
                await self._failed(name, exc)

    async def complete(self) -> None:
        for name, upload in list(self.uploads.items()):
            try:
                await upload.complete()
            except Exception as exc:
                await self._failed(name, exc)
            else:
                self.completed.append(name)
                del self.uploads[name]

    async def _failed(self, name: str, exc: Exception) -> None:
        if name == self.required:
            raise exc
        upload = self.uploads.pop(name, None)
        self.storages = {n: s for n, s in self.storages.items() if n != name}
        if upload is not None:
            await asyncio.shield(upload.abort())
        if self.on_drop is not None:
            await self.on_drop(name, str(exc) or type(exc).__name__)

    async def abort(self) -> None:
        for upload in self.uploads.values():
            await upload.abort()
        self.uploads.clear()
        for name in self.completed:
            with contextlib.suppress(Exception):
                await self.storages[name].delete([self.key])


async def _cleanup(pipeline: Pipeline, transfer: _Transfer) -> None:
    await pipeline.kill()
    await transfer.abort()
