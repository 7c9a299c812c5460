"""Fetching an archive for restore or verification: download, decrypt, check.

Each object streams from storage into ``gpg --decrypt | zstd -d``, which writes the plaintext to
a private file (0600, in a 0700 scratch folder), while its size and SHA-256 are computed on the
way. The plaintext is trusted -- handed to pg_restore -- only when all three hold:

1. size and SHA-256 equal the manifest's (checked first: a flipped bit is reported as such even
   though gpg, which writes all the plaintext before failing, fails too -- SPEC 2.12);
2. gpg and zstd exited 0;
3. gpg's status output says ``DECRYPTION_OKAY`` and nothing like ``BADMDC``.

Download and decryption overlap, and no encrypted copy is kept on disk. The scratch folder is
removed by :func:`scratch_dir`'s context manager, also on failure or cancellation.

Objects are read from the primary storage. When one is missing there, cannot be read, or fails
its size or SHA-256, it is read from the first copy (``PGVAULT_COPIES``, in order) that holds it
intact, checked the same way (SPEC 2.15); which location served each object is kept in the job's
result (``source``, ``sources``), also when the job fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from app.backup import manifest as mf
from app.errors import StepFailed
from app.integrations import gpg, zstd
from app.integrations.process import Pipeline, PipelineError
from app.integrations.storage import PRIMARY, Storage, StorageError
from app.jobs.context import JobContext
from app.steps import Step

OWNER_LOCK = ".owner.lock"
# A folder without its lock file is either from an older version or a moment old (created, not
# yet locked): only the former is swept, by age.
UNLOCKED_STALE_S = 600
# What every version named them: mkdtemp's ``pgvault-<pid>-`` (then, once, the pid's start time).
_SCRATCH_NAME = re.compile(r"^pgvault-\d+-[A-Za-z0-9_-]+$")


@contextlib.asynccontextmanager
async def scratch_dir(ctx: JobContext) -> AsyncIterator[Path]:
    base = ctx.services.settings.work_dir
    folder, lock_fd = await asyncio.to_thread(_make_owned, base)
    path = Path(folder)
    await ctx.note_cleanup("scratch_dir", str(path))
    try:
        yield path
    finally:
        await asyncio.shield(asyncio.to_thread(_remove_owned, path, lock_fd))


def _make_owned(base: Path | None) -> tuple[str, int]:
    """A private folder, and a lock on it that this process holds while it lives. The kernel
    drops the lock when the process dies, whatever its pid namespace or host pid, so replicas
    sharing a work_dir (containers that are all pid 1) can tell a dead owner from a live one."""
    folder = tempfile.mkdtemp(dir=base, prefix=f"pgvault-{os.getpid()}-")
    fd = os.open(os.path.join(folder, OWNER_LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return folder, fd


def _remove_owned(path: Path, lock_fd: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock_fd)


def sweep_orphans(base: Path | None) -> list[Path]:
    """Remove scratch folders (decrypted dumps) that no live process owns: a crash left them."""
    removed = []
    for path in Path(base or tempfile.gettempdir()).glob("pgvault-*"):
        if not _looks_like_scratch(path):
            continue
        try:
            fd = os.open(path / OWNER_LOCK, os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > UNLOCKED_STALE_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its owner is alive
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _looks_like_scratch(path: Path) -> bool:
    """A folder (not a link to one) named as pgvault names scratch folders and holding nothing
    but regular files, as they only ever do. The default base is the machine's shared /tmp: a
    ``/tmp/pgvault-archives`` storage root, or anyone's folder with a similar name, holds
    subfolders or links and is never swept."""
    if not _SCRATCH_NAME.match(path.name):
        return False
    try:
        if not stat.S_ISDIR(path.lstat().st_mode):
            return False
        with os.scandir(path) as entries:
            return all(entry.is_file(follow_symlinks=False) for entry in entries)
    except OSError:
        return False


async def _feed(storage: Storage, key: str, pipeline: Pipeline, digest: hashlib._Hash,
                on_bytes: Callable[[int], None]) -> int:
    """Stream an object into gpg's stdin, hashing it; returns its size."""
    size = 0
    async for chunk in storage.iter_chunks(key, 4 << 20):
        await pipeline.write(chunk, digest)
        size += len(chunk)
        on_bytes(size)
    return size


async def fetch_object(ctx: JobContext, key: str, entry: mf.ArchiveObject, plain: Path,
                       on_bytes: Callable[[int], None], storage: Storage | None = None) -> None:
    """Download ``key`` (from the primary unless ``storage`` says otherwise), decrypt and
    decompress it into ``plain``, and check it (see above)."""
    settings = ctx.services.settings
    storage = storage or ctx.services.storage
    status = plain.with_suffix(".gpg-status")
    name = entry.key
    digest = hashlib.sha256()
    out = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # first: may fail alone
    pipeline_error: PipelineError | None = None
    size = 0
    fed_all = False
    try:
        with gpg.decrypt_stage(settings.gpg_home, status, settings.gpg_passphrase) as decrypt:
            pipeline = Pipeline([decrypt, zstd.decompress_stage()], stdout=out, feed=True)
            try:
                await pipeline.start()
                try:
                    size = await _feed(storage, key, pipeline, digest, on_bytes)
                    await pipeline.close_input()  # end of input for gpg
                    fed_all = True
                except BrokenPipeError:
                    pass  # gpg stopped reading: its exit code says why
                await pipeline.wait()
            except PipelineError as exc:
                pipeline_error = exc
            except BaseException:
                await asyncio.shield(pipeline.kill())
                raise
            finally:
                await pipeline.close_input()  # gpg is gone or done: a write still going ends
    except KeyError:
        raise StepFailed(Step.CHECKSUM, f"object {name} is missing from storage") from None
    except StorageError as exc:
        raise StepFailed(Step.DOWNLOAD, str(exc)) from None
    finally:
        os.close(out)
    if fed_all:  # the whole object went through: its hash decides first
        if size != entry.size_bytes:
            raise StepFailed(Step.CHECKSUM, f"object {name} is {size} bytes, the manifest says "
                                            f"{entry.size_bytes}: corrupt or truncated")
        if digest.hexdigest() != entry.sha256:
            raise StepFailed(Step.CHECKSUM, f"object {name} has SHA-256 {digest.hexdigest()[:16]}"
                                            f"..., the manifest says {entry.sha256[:16]}...: "
                                            "corrupt or tampered with")
    if pipeline_error is not None:
        raise await _unpack_failure(status, pipeline_error)
    if not fed_all:
        raise StepFailed(Step.DECRYPT, f"gpg stopped reading {name} before its end")
    status_text = await asyncio.to_thread(status.read_text)
    if not gpg.decryption_succeeded(status_text):
        raise StepFailed(Step.DECRYPT, "gpg did not report a verified decryption (no "
                                       "DECRYPTION_OKAY); the archive cannot be trusted")


async def _unpack_failure(status: Path, error: PipelineError) -> StepFailed:
    """gpg or zstd failed on an object whose hash matched. That is the archive's fault
    ("decrypt": it counts as damage) unless the machine is plainly to blame: this keyring has no
    secret key for it, or the work directory is full."""
    try:
        status_text = await asyncio.to_thread(status.read_text)
    except OSError:
        status_text = ""
    if gpg.lacks_secret_key(status_text, str(error)):
        return StepFailed(Step.KEYS, "this replica's keyring holds no secret key for the archive's "
                                     f"recipients (PGVAULT_GPG_HOME): {error}")
    if "No space left on device" in str(error):
        return StepFailed(Step.UNPACK, f"the work directory is full: {error}")
    return StepFailed(Step.DECRYPT, str(error))


async def fetch(ctx: JobContext, doc: mf.Manifest, workdir: Path) -> dict[str, Path]:
    """Download, decrypt and check every object; returns the plaintext files by kind."""
    if doc.compression not in ("zstd", None):
        raise StepFailed(Step.FETCH, f"unsupported compression {doc.compression!r}")
    prefix = mf.archive_prefix(doc.target, doc.backup_id)
    objects = doc.objects
    await ctx.set_phase(Step.DOWNLOAD, bytes_total=sum(o.size_bytes for o in objects))
    done = 0
    plain: dict[str, Path] = {}
    sources: dict[str, str] = {}
    for entry in objects:
        key = entry.key
        if "/" in key or key.startswith("."):
            raise StepFailed(Step.CHECKSUM,
                             f"manifest names an object outside the archive: {key!r}")
        kind = entry.kind or key

        def progress(n: int, base: int = done) -> None:
            ctx.progress(bytes_done=base + n)

        target = workdir / f"{kind}.plain"
        sources[key] = await _fetch_intact(ctx, prefix + key, entry, target, progress)
        ctx.result.update(source=main_source(doc, sources), sources=dict(sources))
        plain[kind] = target
        done += entry.size_bytes
    return plain


# A failure of these steps is the object's in this location (absent, unreadable, short, a hash
# that differs): another location may hold it intact. Any other (gpg, zstd, the keyring, a full
# disk) would fail the same with every location's bytes.
_LOCAL_DAMAGE = frozenset({Step.CHECKSUM, Step.DOWNLOAD})


async def _fetch_intact(ctx: JobContext, key: str, entry: mf.ArchiveObject, plain: Path,
                        on_bytes: Callable[[int], None]) -> str:
    """:func:`fetch_object` from the primary, else from the first copy that holds the object
    intact; returns the name of the location that served it."""
    try:
        await fetch_object(ctx, key, entry, plain, on_bytes)
        return PRIMARY
    except StepFailed as exc:
        if exc.step not in _LOCAL_DAMAGE or not ctx.services.copies:
            raise
        first = exc
    tried: list[str] = []
    for location in ctx.services.copies:
        try:
            await fetch_object(ctx, key, entry, plain, on_bytes, storage=location.storage)
        except StepFailed as exc:
            if exc.step not in _LOCAL_DAMAGE:
                raise
            tried.append(f"copy {location.name}: {exc.cause}")
            continue
        ctx.log.warning("object_read_from_copy", key=key, location=location.name,
                        primary=first.cause)
        return location.name
    raise StepFailed(first.step, f"{first.cause}; no copy holds it intact ({'; '.join(tried)})")


def source_note(result: dict[str, object]) -> str:
    """For a job's summary: "" when every object came from the primary."""
    sources = result.get("sources")
    if not isinstance(sources, dict):
        return ""
    served = sorted({name for name in sources.values() if name != PRIMARY})
    if not served:
        return ""
    count = sum(1 for name in sources.values() if name != PRIMARY)
    return (f"; {count} object(s) read from copy {', '.join(served)}: the primary's were "
            "missing or damaged (a reconcile job repairs them)")


def main_source(doc: mf.Manifest, sources: dict[str, str]) -> str:
    """``primary`` when every object came from it; else the copy that served the database
    object, or the first copy that served any."""
    copies = [name for name in sources.values() if name != PRIMARY]
    if not copies:
        return PRIMARY
    database = next((sources[o.key] for o in doc.objects
                     if (o.kind or o.key) in ("database", mf.DATABASE_OBJECT)
                     and o.key in sources), PRIMARY)
    return database if database != PRIMARY else copies[0]
