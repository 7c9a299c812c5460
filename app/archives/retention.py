"""The retention command (SPEC 2.5).

Keeps every archive younger than ``retention_days``, and whatever its age, the newest
``retention_min_backups`` good archives (complete and not failed by their last verification) --
so the newest good archive always survives. A suspect archive (SPEC 2.14: its facts fell
sharply, and no operator cleared it) is not good: it never takes the place of the good ones it
followed, is kept within ``retention_days`` and expires normally after. Removes expired
archives, incomplete archives (no manifest) and stale multipart uploads older than the grace
period, except those of a backup that is still running. Unreadable archives (a manifest that
cannot be trusted, objects that are links) are kept and never counted as good: a human decides.
An archive the plan would delete while any of its objects, in any location, is still under S3
Object Lock is kept instead, its item carrying ``locked_until`` (SPEC 2.15); only those
archives' locks are read. Deleting removes the archive from every location
(:mod:`app.archives.removal`). ``dry_run`` computes exactly the same plan and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from app.archives import removal
from app.archives.schemas import Archive
from app.archives.service import catalogue, deletions_locked, is_good
from app.integrations.storage import Location, StorageError
from app.integrations.storage.base import PendingUpload
from app.jobs import repository as jobs_repo
from app.jobs.context import JobContext
from app.resources import Resources
from app.steps import Step


def plan(archives: list[Archive], *, now: datetime, retention_days: int, min_backups: int,
         grace: timedelta, busy: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(delete, keep), each a list of ``{"backup_id", "reason"}``; archives newest first."""
    cutoff = now - timedelta(days=retention_days)
    good = [a.backup_id for a in archives if is_good(a)]
    protected = set(good[:max(min_backups, 1)])
    delete, keep = [], []
    for archive in archives:
        bid = archive.backup_id
        if bid in busy:
            keep.append({"backup_id": bid, "reason": "a running job is writing or reading it"})
        elif bid in protected:
            keep.append({"backup_id": bid, "reason": f"one of the newest {min_backups} good"})
        elif archive.status == "unreadable":
            # Not pgvault's to judge: a hand-copied manifest or linked objects may be someone's
            # only copy. Kept (and never counted as good) until an admin deletes it.
            keep.append({"backup_id": bid,
                         "reason": f"unreadable ({archive.reason}): needs a human"})
        elif not archive.complete:
            if archive.created_at < now - grace:
                delete.append({"backup_id": bid, "reason": "incomplete (no manifest)"})
            else:
                keep.append({"backup_id": bid, "reason": "incomplete, within the grace period"})
        elif archive.created_at < cutoff:
            delete.append({"backup_id": bid,
                           "reason": f"older than {retention_days} days{_suspect(archive)}"})
        else:
            keep.append({"backup_id": bid,
                         "reason": f"within {retention_days} days{_suspect(archive)}"})
    return delete, keep


def _suspect(archive: Archive) -> str:
    return " (suspect: not counted as good)" if archive.suspect else ""


async def run_retention(ctx: JobContext) -> tuple[dict[str, Any], str]:
    services = ctx.services
    settings = services.settings
    dry_run = bool(ctx.params.get("dry_run"))
    now = datetime.now(UTC)
    grace = timedelta(hours=settings.incomplete_grace_hours)
    await ctx.set_phase(Step.PLAN)
    async with deletions_locked(services, ctx.target):
        return await _apply(ctx, dry_run, now, grace)


async def _apply(ctx: JobContext, dry_run: bool, now: datetime,
                 grace: timedelta) -> tuple[dict[str, Any], str]:
    services = ctx.services
    target = services.settings.targets[ctx.target]
    async with services.pool.acquire() as conn:
        running = await jobs_repo.active_backup(conn, ctx.target)
        in_use = await jobs_repo.archives_in_use(conn, ctx.target)
    busy_prefix = (running["cleanup"] or {}).get("archive_prefix", "") if running else ""
    busy = set(in_use)
    if busy_prefix.count("/") >= 2:
        busy.add(busy_prefix.split("/")[1])
    services.manifests.clear()  # another replica may have deleted some: read storage afresh
    archives = await catalogue(services, ctx.target)
    delete, keep = plan(archives, now=now, retention_days=target.retention_days,
                        min_backups=target.retention_min_backups, grace=grace, busy=busy)
    delete, locked, held = await _unlocked(services, ctx.target, delete, ctx.alive)
    keep += locked
    n_locked = sum(1 for item in locked if item.get("locked_until"))
    uploads = [(loc, u) for loc, pending in await _pending_uploads(ctx) for u in pending
               if u.started < now - grace
               and not (busy_prefix and u.key.startswith(busy_prefix))]
    if not dry_run:
        await ctx.set_phase(Step.DELETE, bytes_total=len(delete))
        for i, item in enumerate(delete, 1):
            await removal.remove(services, ctx.target, item["backup_id"], held[item["backup_id"]])
            ctx.progress(bytes_done=i)
        for location, upload in uploads:
            await location.storage.abort_upload(upload.key, upload.upload_id)
    result = {
        "dry_run": dry_run,
        "deleted": delete,
        "kept": keep,
        "uploads_aborted": [{"key": u.key, "started": u.started.isoformat(),
                             "location": loc.name} for loc, u in uploads],
        "retention_days": target.retention_days,
        "retention_min_backups": target.retention_min_backups,
    }
    verb = "would delete" if dry_run else "deleted"
    summary = (f"retention of {ctx.target}: {verb} {len(delete)} archive(s), kept {len(keep)}"
               f"{f' ({n_locked} under Object Lock)' if n_locked else ''}, "
               f"{'would abort' if dry_run else 'aborted'} {len(uploads)} stale upload(s)")
    return result, summary


async def _pending_uploads(ctx: JobContext) -> list[tuple[Location, list[PendingUpload]]]:
    """Open uploads in every location: a copy's are left behind as a primary's are (a worker
    killed mid-backup, a reaper that could not reach the copy). The primary's listing failing
    fails the run as before; a copy that cannot be listed now is skipped (and logged)."""
    found = []
    for location in ctx.services.locations:
        try:
            found.append((location, await location.storage.pending_uploads(f"{ctx.target}/")))
        except StorageError as exc:
            if location.primary:
                raise
            ctx.log.warning("copy_uploads_unlisted", location=location.name, reason=str(exc))
    return found


async def _unlocked(services: Resources, target: str, delete: list[dict[str, Any]],
                    alive: Callable[[], None],
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                               dict[str, list[removal.Held]]]:
    """(still to delete, kept because locked or whole in a copy only, each deletable archive's
    objects per location). ``alive``: called per archive (the stall watchdog's progress: many
    archives on slow storage take long, and move no counter)."""
    free, locked, held = [], [], {}
    for item in delete:
        alive()
        bid = item["backup_id"]
        found = await removal.holdings(services, target, bid)
        kept = await removal.hold(found, target, bid)
        if kept is None:
            free.append(item)
            held[bid] = found
        else:
            locked.append({"backup_id": bid, "reason": f"{item['reason']}, but {kept.why}",
                           **({"locked_until": kept.locked_until} if kept.locked_until else {})})
    return free, locked, held
