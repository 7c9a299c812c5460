"""A local folder as archive storage (development, tests, NFS mounts).

An upload writes ``<key>.upload-<id>`` and renames it into place on completion (atomic on one
filesystem), so a reader never sees a half-written object under its final key. Blocking file I/O
runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from app.integrations.storage.base import ObjectInfo, PendingUpload, StorageError

UPLOAD_MARK = ".upload-"


class FileUpload:
    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.upload_id = secrets.token_hex(8)
        self._final = root / key
        self._partial = root / f"{key}{UPLOAD_MARK}{self.upload_id}"
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self._partial, "wb")

    async def write_part(self, data: bytes) -> None:
        await asyncio.to_thread(self._fh.write, data)

    async def complete(self) -> None:
        def finish() -> None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._partial, self._final)

        await asyncio.to_thread(finish)

    async def abort(self) -> None:
        def discard() -> None:
            self._fh.close()
            self._partial.unlink(missing_ok=True)

        await asyncio.to_thread(discard)


class FileStorage:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key {key!r} leaves the storage folder")
        return path

    async def check(self) -> None:
        def probe() -> None:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".readyz-{secrets.token_hex(4)}"
            probe.write_bytes(b"ok")
            probe.unlink()

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise StorageError(
                f"storage folder {self.root} is not writable: {exc.strerror}") from None

    async def start_upload(self, key: str) -> FileUpload:
        self._path(key)
        return await asyncio.to_thread(FileUpload, self.root, key)

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + UPLOAD_MARK + secrets.token_hex(4))
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

        # A cancelled caller must not return while the thread can still rename the file into
        # place: it would delete the manifest, then see it appear behind its back.
        done = asyncio.ensure_future(asyncio.to_thread(write))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(done)
            raise

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise KeyError(key) from None

    async def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            fh = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            found: list[ObjectInfo] = []
            if not self.root.exists():
                return found
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    full = Path(dirpath) / name
                    key = full.relative_to(self.root).as_posix()
                    if key.startswith(prefix) and UPLOAD_MARK not in name:
                        st = full.stat()
                        found.append(ObjectInfo(key, st.st_size,
                                                datetime.fromtimestamp(st.st_mtime, UTC)))
            return sorted(found, key=lambda o: o.key)

        return await asyncio.to_thread(walk)

    async def delete(self, keys: list[str]) -> None:
        def remove() -> None:
            for key in keys:
                path = self._path(key)
                path.unlink(missing_ok=True)
                parent = path.parent
                while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
                    parent = parent.parent

        await asyncio.to_thread(remove)

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        def walk() -> list[PendingUpload]:
            found: list[PendingUpload] = []
            for full in self.root.rglob(f"*{UPLOAD_MARK}*"):
                key, _, upload_id = full.relative_to(self.root).as_posix().rpartition(UPLOAD_MARK)
                if key.startswith(prefix):
                    started = datetime.fromtimestamp(full.stat().st_mtime, UTC)
                    found.append(PendingUpload(key, upload_id, started))
            return found

        return await asyncio.to_thread(walk)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        path = self._path(f"{key}{UPLOAD_MARK}{upload_id}")
        await asyncio.to_thread(path.unlink, True)
