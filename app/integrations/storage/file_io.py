"""The low-level pieces of :mod:`app.integrations.storage.file`: folders walked from directory
descriptors without following links, new files created exclusively, and the upload that writes
``<key>.upload-<id>`` and renames it into place (see that module's docstring for the rules)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets

from app.integrations.storage.base import StorageError, StorageRefused, key_parts

UPLOAD_MARK = ".upload-"
FILE_MODE = 0o640
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_UPLOAD_ID = re.compile(r"^[0-9a-f]{1,64}$")


def _refusal(key: str, exc: OSError) -> StorageError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return StorageRefused(f"refused {key!r}: it or a folder on its path is a symbolic link "
                              "or not a folder (pgvault never follows links)")
    return StorageError(f"cannot use {key!r}: {exc.strerror}")


class _Folder:
    """The folder that holds a key's last component, open as a descriptor (closed on exit)."""

    def __init__(self, root: str, key: str, *, create: bool) -> None:
        self.key = key
        parts = key_parts(key)
        self.name = parts[-1]
        if create:
            os.makedirs(root, exist_ok=True)
        fd = os.open(root, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                if create:
                    try:
                        os.mkdir(part, 0o750, dir_fd=fd)
                    except FileExistsError:
                        pass
                    else:
                        os.fsync(fd)  # durable (module docstring)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    raise _refusal(key, exc) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _new_file(folder: _Folder, name: str) -> int:
    try:
        return os.open(name, _NEW_FILE_FLAGS, FILE_MODE, dir_fd=folder.fd)
    except OSError as exc:
        raise _refusal(folder.key, exc) from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_part(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    # Start writing the part back to disk now (Linux: dirty pages are written, not dropped), so
    # the fsync at completion does not wait for the whole object at once.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class FileUpload:
    def __init__(self, root: str, key: str) -> None:
        self.key = key
        self.upload_id = secrets.token_hex(8)
        self._folder = _Folder(root, key, create=True)
        self._partial = f"{self._folder.name}{UPLOAD_MARK}{self.upload_id}"
        self._writing: asyncio.Future[None] | None = None
        try:
            self._fd = _new_file(self._folder, self._partial)
        except BaseException:
            self._folder.close()
            raise

    async def write_part(self, data: bytes) -> None:
        # One part is written (in a thread) while the caller fills the next: the disk's time
        # overlaps the pipeline's instead of adding to it, and at most one part waits here.
        await self._drain()
        self._writing = asyncio.ensure_future(asyncio.to_thread(_write_part, self._fd, data))

    async def _drain(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def complete(self) -> None:
        await self._drain()

        def finish() -> None:
            try:
                os.fsync(self._fd)
                # rename() replaces the name, never writes through it: a link or a hard-linked
                # file already under the key is replaced, its target left as it was.
                os.replace(self._partial, self._folder.name,
                           src_dir_fd=self._folder.fd, dst_dir_fd=self._folder.fd)
                os.fsync(self._folder.fd)  # durable (module docstring)
            finally:
                self._close()

        await asyncio.to_thread(finish)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._folder.close()

    async def abort(self) -> None:
        def discard() -> None:
            with contextlib.suppress(OSError):
                if self._folder.fd >= 0:
                    os.unlink(self._partial, dir_fd=self._folder.fd)
            self._close()

        with contextlib.suppress(Exception):
            await asyncio.shield(self._drain())  # a thread's write cannot be cut short
        await asyncio.to_thread(discard)
