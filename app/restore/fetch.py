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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.backup import manifest as mf
from app.errors import StepFailed
from app.integrations import gpg, pg_tools
from app.integrations.process import Pipeline, PipelineError, PipeWriter
from app.integrations.storage import StorageError

if TYPE_CHECKING:
    from app.jobs.runner import JobContext


@contextlib.asynccontextmanager
async def scratch_dir(ctx: JobContext) -> AsyncIterator[Path]:
    base = ctx.services.settings.work_dir
    path = Path(await asyncio.to_thread(_mkdtemp, base))
    await ctx.note_cleanup("scratch_dir", str(path))
    try:
        yield path
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, path, True))


def _mkdtemp(base: Path | None) -> str:
    pid = os.getpid()
    return tempfile.mkdtemp(dir=base, prefix=f"pgvault-{pid}-{_started(pid)}-")


def sweep_orphans(base: Path | None) -> list[Path]:
    """Remove scratch folders (decrypted dumps) whose process is gone: a crash left them.

    A folder is named ``pgvault-<pid>-<start>-<random>``: the pid alone would keep a dead
    worker's plaintext forever in a container, where every restart is pid 1 again."""
    removed = []
    for path in Path(base or tempfile.gettempdir()).glob("pgvault-*-*"):
        parts = path.name.split("-")
        if not path.is_dir() or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        start = parts[2] if len(parts) > 3 and parts[2].isdigit() else None
        if _started(pid) is None or (start is not None and _started(pid) != int(start)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses); start is field 22.
    return int(stat.rsplit(")", 1)[1].split()[19])


async def _feed(ctx: JobContext, key: str, feed: PipeWriter, digest: hashlib._Hash,
                on_bytes: Callable[[int], None]) -> int:
    """Stream an object into gpg's stdin, hashing it; returns its size."""
    size = 0
    async for chunk in ctx.services.storage.iter_chunks(key, 4 << 20):
        await feed.write(chunk, digest)
        size += len(chunk)
        on_bytes(size)
    return size


async def fetch_object(ctx: JobContext, key: str, entry: dict[str, Any], plain: Path,
                       on_bytes: Callable[[int], None]) -> None:
    """Download ``key``, decrypt and decompress it into ``plain``, and check it (see above)."""
    settings = ctx.services.settings
    status = plain.with_suffix(".gpg-status")
    name = entry["key"]
    digest = hashlib.sha256()
    feed_r, feed_w = os.pipe()
    feed = PipeWriter(feed_w, "fetch")
    pass_r: int | None = None
    out = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    pipeline_error: PipelineError | None = None
    size = 0
    fed_all = False
    try:
        if settings.gpg_passphrase is not None:
            pass_r, pass_w = os.pipe()
            os.write(pass_w, settings.gpg_passphrase.get_secret_value().encode() + b"\n")
            os.close(pass_w)
        pipeline = Pipeline([gpg.decrypt_stage(settings.gpg_home, None, status, pass_r),
                             pg_tools.zstd_decompress_stage()], stdin=feed_r, stdout=out)
        try:
            await pipeline.start()
        finally:
            os.close(feed_r)
        try:
            try:
                size = await _feed(ctx, key, feed, digest, on_bytes)
                await feed.close()  # end of input for gpg
                fed_all = True
            except BrokenPipeError:
                pass  # gpg stopped reading: its exit code says why
            await pipeline.wait()
        except PipelineError as exc:
            pipeline_error = exc
        except BaseException:
            await asyncio.shield(pipeline.kill())
            raise
    except KeyError:
        raise StepFailed("checksum", f"object {name} is missing from storage") from None
    except StorageError as exc:
        raise StepFailed("download", str(exc)) from None
    finally:
        await feed.close()  # gpg is gone or done by now: a write still going ends (EPIPE)
        os.close(out)
        if pass_r is not None:
            os.close(pass_r)
    if fed_all:  # the whole object went through: its hash decides first
        if size != int(entry["size_bytes"]):
            raise StepFailed("checksum", f"object {name} is {size} bytes, the manifest says "
                                         f"{entry['size_bytes']}: corrupt or truncated")
        if digest.hexdigest() != entry["sha256"]:
            raise StepFailed("checksum", f"object {name} has SHA-256 {digest.hexdigest()[:16]}"
                                         f"..., the manifest says {entry['sha256'][:16]}...: "
                                         "corrupt or tampered with")
    if pipeline_error is not None:
        raise await _unpack_failure(status, pipeline_error)
    if not fed_all:
        raise StepFailed("decrypt", f"gpg stopped reading {name} before its end")
    status_text = await asyncio.to_thread(status.read_text)
    if not gpg.decryption_succeeded(status_text):
        raise StepFailed("decrypt", "gpg did not report a verified decryption (no "
                                    "DECRYPTION_OKAY); the archive cannot be trusted")


async def _unpack_failure(status: Path, error: PipelineError) -> StepFailed:
    """gpg or zstd failed on an object whose hash matched. That is the archive's fault
    ("decrypt": it counts as damage) unless the machine is plainly to blame: this keyring has no
    secret key for it, or the work directory is full."""
    try:
        status_text = await asyncio.to_thread(status.read_text)
    except OSError:
        status_text = ""
    # gpg says NO_SECKEY in its status, or only "No secret key" on stderr (when the keyring
    # lacks the subkey altogether); children run in the C locale, so the words are stable.
    no_key = "NO_SECKEY" in status_text or "No secret key" in str(error)
    if no_key and "DECRYPTION_OKAY" not in status_text:
        return StepFailed("keys", "this replica's keyring holds no secret key for the archive's "
                                  f"recipients (PGVAULT_GPG_HOME): {error}")
    if "No space left on device" in str(error):
        return StepFailed("unpack", f"the work directory is full: {error}")
    return StepFailed("decrypt", str(error))


async def fetch(ctx: JobContext, doc: dict[str, Any], workdir: Path) -> dict[str, Path]:
    """Download, decrypt and check every object; returns the plaintext files by kind."""
    if doc.get("compression") not in ("zstd", None):
        raise StepFailed("fetch", f"unsupported compression {doc.get('compression')!r}")
    prefix = mf.archive_prefix(doc["target"], doc["backup_id"])
    objects = doc.get("objects") or []
    await ctx.set_phase("download", bytes_total=sum(int(o["size_bytes"]) for o in objects))
    done = 0
    plain: dict[str, Path] = {}
    for entry in objects:
        key = entry["key"]
        if "/" in key or key.startswith("."):
            raise StepFailed("checksum", f"manifest names an object outside the archive: {key!r}")
        kind = entry.get("kind", key)

        def progress(n: int, base: int = done) -> None:
            ctx.progress(bytes_done=base + n)

        target = workdir / f"{kind}.plain"
        await fetch_object(ctx, prefix + key, entry, target, progress)
        plain[kind] = target
        done += int(entry["size_bytes"])
    return plain
