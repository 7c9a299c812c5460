"""A local folder as archive storage (development, tests, NFS mounts).

pgvault reads, writes and deletes only regular files inside its root, and never follows a link:

- the root is resolved once, when the storage is opened (an operator may point it through a
  symbolic link such as ``/var/backups -> /mnt/x``); nothing below it is ever resolved;
- every path is walked one component at a time from a directory descriptor, each opened with
  ``O_DIRECTORY | O_NOFOLLOW``, and files are opened with ``O_NOFOLLOW`` and checked to be regular
  (``O_NONBLOCK`` so a FIFO cannot hang a read): a symbolic link anywhere in a key, a symlinked
  folder, a device or a FIFO is refused with :class:`StorageError`;
- keys with ``..``, ``.``, empty components or a leading ``/`` are refused (``key_parts``);
- writes create new files only (``O_CREAT | O_EXCL``) and rename them into place: an existing
  file, a hard link to someone else's data included, is never opened for writing;
- deleting a key removes that name only (``unlinkat``): a symbolic link is removed, never its
  target -- an archive made of links is not something pgvault wrote, and removing the links is
  the one deletion that cannot lose anybody's data; a hard-linked file keeps its other names;
- listing never descends into a symlinked folder; links and other non-regular entries are listed
  with ``usable=False`` so that their archive shows as unusable rather than vanishing;
- a file changed during a read (size, modification time, or its name now pointing at another
  file) fails the read instead of yielding a mix of two files.

An upload writes ``<key>.upload-<id>`` and renames it into place on completion (atomic on one
filesystem), so a reader never sees a half-written object under its final key. The folder is
fsynced after every rename and every new subfolder: until then a name is only in memory, and a
crash could keep the manifest's name yet lose an object's, leaving an archive that looked
complete when its backup succeeded. Blocking file I/O
runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime

from app.integrations.storage.base import (
    ObjectInfo,
    PendingUpload,
    StorageError,
    StorageRefused,
    WithoutLocks,
    key_parts,
)
from app.integrations.storage.file_io import (
    _DIR_FLAGS,
    _READ_FLAGS,
    _UPLOAD_ID,
    UPLOAD_MARK,
    FileUpload,
    _Folder,
    _new_file,
    _refusal,
    _write_all,
)


class FileStorage(WithoutLocks):
    def __init__(self, root: str) -> None:
        # Resolved once: the operator may configure the root through a link; nothing below it
        # is ever resolved.
        self.root = os.path.realpath(root)

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        def probe() -> None:
            os.makedirs(self.root, exist_ok=True)
            self._write(f".readyz-{secrets.token_hex(4)}", b"ok", keep=False)

        try:
            await asyncio.to_thread(probe)
        except (OSError, StorageError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise StorageError(f"storage folder {self.root} is not writable: {reason}") from None

    async def start_upload(self, key: str) -> FileUpload:
        try:
            return await asyncio.to_thread(FileUpload, self.root, key)
        except OSError as exc:
            raise _refusal(key, exc) from None

    def _write(self, key: str, data: bytes, *, keep: bool = True) -> None:
        folder = _Folder(self.root, key, create=True)
        try:
            tmp = f"{folder.name}{UPLOAD_MARK}{secrets.token_hex(4)}"
            fd = _new_file(folder, tmp)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if keep:
                os.replace(tmp, folder.name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
                os.fsync(folder.fd)  # durable (module docstring)
            else:
                os.unlink(tmp, dir_fd=folder.fd)
        finally:
            folder.close()

    async def put(self, key: str, data: bytes) -> None:
        key_parts(key)
        # A cancelled caller must not return while the thread can still rename the file into
        # place: it would delete the manifest, then see it appear behind its back.
        done = asyncio.ensure_future(asyncio.to_thread(self._write, key, data))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(done)
            raise
        except OSError as exc:
            raise _refusal(key, exc) from None

    def _open(self, key: str) -> tuple[int, os.stat_result, _Folder]:
        """A regular file opened without following links; KeyError when it does not exist."""
        try:
            folder = _Folder(self.root, key, create=False)
        except FileNotFoundError:
            raise KeyError(key) from None
        try:
            fd = os.open(folder.name, _READ_FLAGS, dir_fd=folder.fd)
        except FileNotFoundError:
            folder.close()
            raise KeyError(key) from None
        except OSError as exc:
            folder.close()
            raise _refusal(key, exc) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            folder.close()
            raise StorageRefused(f"refused {key!r}: not a regular file (a link, folder or device)")
        return fd, st, folder

    @staticmethod
    def _unchanged(key: str, fd: int, before: os.stat_result, folder: _Folder,
                   read: int) -> None:
        """Fail a read whose file changed under it (rewritten in place, or replaced)."""
        after = os.fstat(fd)
        try:
            named = os.stat(folder.name, dir_fd=folder.fd, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        if (read != before.st_size or after.st_size != before.st_size
                or after.st_mtime_ns != before.st_mtime_ns or named is None
                or (named.st_dev, named.st_ino) != (before.st_dev, before.st_ino)):
            raise StorageError(f"{key!r} changed while it was read; read it again")

    def _chunks(self, key: str, chunk_size: int) -> Generator[bytes, None, None]:
        fd, before, folder = self._open(key)
        try:
            read = 0
            while chunk := os.read(fd, chunk_size):
                read += len(chunk)
                yield chunk
            self._unchanged(key, fd, before, folder, read)
        finally:
            os.close(fd)
            folder.close()

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            return b"".join(self._chunks(key, 1 << 20))

        return await asyncio.to_thread(read)

    async def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        chunks = self._chunks(key, chunk_size)  # runs nothing until the first next()
        step: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                # Shielded: a cancelled caller leaves the thread's read running; the generator
                # (and its descriptors) is closed only once that read is over, never under it.
                step = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                chunk = await asyncio.shield(step)
                if chunk is None:
                    return
                yield chunk
        finally:
            if step is not None and not step.done():
                def close_after(done: asyncio.Future[bytes | None]) -> None:
                    if not done.cancelled():
                        done.exception()  # retrieved: nobody is waiting for it any more
                    chunks.close()

                step.add_done_callback(close_after)
            else:
                chunks.close()

    def _walk(self, prefix: str, upload_parts: bool) -> Iterator[tuple[str, os.stat_result]]:
        """(key, lstat) of every non-folder entry under the root that may start with
        ``prefix``, without entering symlinked folders; upload parts only when asked."""
        try:
            top = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            return
        stack: list[tuple[int, str]] = [(top, "")]
        try:
            while stack:
                fd, base = stack.pop()
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            key = base + entry.name
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except FileNotFoundError:
                                continue  # removed while we looked
                            if stat.S_ISDIR(st.st_mode):
                                below = key + "/"
                                if below.startswith(prefix) or prefix.startswith(below):
                                    with contextlib.suppress(OSError):  # became a link since
                                        stack.append(
                                            (os.open(entry.name, _DIR_FLAGS, dir_fd=fd), below))
                            elif (UPLOAD_MARK in entry.name) == upload_parts \
                                    and key.startswith(prefix):
                                yield key, st
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)

    async def list_objects(self, prefix: str) -> list[ObjectInfo]:
        def walk() -> list[ObjectInfo]:
            found = [ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC),
                                usable=stat.S_ISREG(st.st_mode))
                     for key, st in self._walk(prefix, upload_parts=False)]
            return sorted(found, key=lambda o: o.key)

        return await asyncio.to_thread(walk)

    def _remove(self, key: str) -> None:
        try:
            folder = _Folder(self.root, key, create=False)
        except FileNotFoundError:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(folder.name, dir_fd=folder.fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise StorageRefused(f"refused to delete {key!r}: it is a folder")
                # unlinkat removes this name only: a link's target, or the other names of a
                # hard-linked file, are untouched.
                os.unlink(folder.name, dir_fd=folder.fd)
        except OSError as exc:
            raise _refusal(key, exc) from None
        finally:
            folder.close()
        self._prune(key_parts(key)[:-1])

    def _prune(self, parents: list[str]) -> None:
        """Remove the key's folders that are now empty, deepest first (rmdir follows no link)."""
        for depth in range(len(parents), 0, -1):
            try:
                folder = _Folder(self.root, "/".join(parents[:depth]), create=False)
            except (OSError, StorageError):
                return
            try:
                os.rmdir(folder.name, dir_fd=folder.fd)
            except OSError:
                return
            finally:
                folder.close()

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            key_parts(key)

        def remove() -> None:
            for key in keys:
                self._remove(key)

        await asyncio.to_thread(remove)

    async def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        def walk() -> list[PendingUpload]:
            found: list[PendingUpload] = []
            for full, st in self._walk(prefix, upload_parts=True):
                key, _, upload_id = full.rpartition(UPLOAD_MARK)
                if key.startswith(prefix) and stat.S_ISREG(st.st_mode):
                    found.append(PendingUpload(key, upload_id,
                                               datetime.fromtimestamp(st.st_mtime, UTC)))
            return found

        return await asyncio.to_thread(walk)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        if not _UPLOAD_ID.match(upload_id):
            raise StorageError(f"upload id {upload_id!r} is not one this storage issued")
        await asyncio.to_thread(self._remove, f"{key}{UPLOAD_MARK}{upload_id}")
