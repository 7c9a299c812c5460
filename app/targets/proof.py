"""Continuous proof and the restore forecast (SPEC 2.14): one reading for the scheduler, target
status and metrics.

- An archive is *proven* when a restore-level verification of it passed, or a conclusive
  verification found it damaged (then it is no longer a candidate: a human looks). Everything
  else complete is *unverified*, suspect archives included: they are the ones to prove first.
- With ``verify_every_archive``, each ``verify`` slot queues restore tests of unverified archives,
  oldest first, skipping those a restore or verification reads now, at most what is left of
  ``verify_budget_per_day`` (restore tests the scheduler queued on the slot's UTC day, any
  status, count against it).
- The forecast: the run times of the target's last :data:`HISTORY` succeeded restores and
  restore-level verifications, against the size of their archives. A restore counts whole (its
  ``duration_s``, as its RTO check counts it), and when there are restores among them, only they
  count: they measured what is forecast. Otherwise the restore tests stand in. A verification
  counts the steps a restore shares with it (fetch and decrypt, create the database,
  pg_restore), not its table of contents, and its compare phase only up to half its pg_restore
  time: that phase holds the row counts and checks that match a restore's post-restore steps
  (40-80 % of pg_restore's time in restores measured here), but also the scratch database's
  drop, which waits for a checkpoint and took longer than the whole rest of a verification of
  a 500k-row table on a busy machine.
  With sizes spread enough, a least-squares line ``a + b * size`` (a fixed cost plus a cost per
  byte); otherwise, or when the line makes no sense (negative), the median time per byte (one
  restore slowed by a busy host does not move it). Applied to the newest good archive
  (complete, not found damaged).
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from croniter import croniter

from app.archives import proof_sql
from app.archives.schemas import Archive
from app.archives.service import catalogue, is_good
from app.errors import PgVaultError
from app.jobs import repository as jobs_repo
from app.resources import Resources
from app.steps import Step
from app.targets.schemas import VerificationSchedule, VerifiedBackup

log = structlog.get_logger("pgvault.proof")

HISTORY = 10  # restores the forecast learns from
MIN_SPREAD = 0.2  # a line needs sizes at least this far apart (of the largest)
LIST_TIMEOUT_S = 10.0  # target status waits this long for the archive listing
VERIFY_ONLY = frozenset({Step.TABLE_OF_CONTENTS, Step.COMPARE})  # a restore has no such phases


@dataclass(frozen=True)
class Proof:
    """What a target's archives prove, and what the next restore would take."""

    last_verified: tuple[str, datetime] | None  # newest good archive with a restore test passed
    unverified: int
    forecast_s: float | None
    used_today: int


def day_of(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def to_prove(archives: Iterable[Archive], passes: dict[str, datetime]) -> list[Archive]:
    """Complete archives with no conclusive verification, oldest first (two backups can start
    in the same second, which is all a backup id says: then the one that finished first)."""
    return sorted((a for a in archives if a.complete and a.backup_id not in passes
                   and not (a.verification and a.verification.damaged)),
                  key=_age)


def _age(archive: Archive) -> tuple[datetime, datetime, str]:
    """Creation order: a backup id's time, then (same second) the one that finished first."""
    return archive.created_at, archive.finished_at or archive.created_at, archive.backup_id


def forecast(points: list[tuple[float, float]], size: float) -> float | None:
    """Expected run time for an archive of ``size`` bytes from ``(size, seconds)`` points."""
    pts = [(s, d) for s, d in points if s > 0 and d >= 0 and math.isfinite(s * d)]
    if not pts:
        return None
    sizes = [s for s, _ in pts]
    if len(pts) >= 2 and max(sizes) - min(sizes) >= MIN_SPREAD * max(sizes):
        ms = sum(sizes) / len(pts)
        md = sum(d for _, d in pts) / len(pts)
        b = sum((s - ms) * (d - md) for s, d in pts) / sum((s - ms) ** 2 for s in sizes)
        a = md - b * ms
        if a >= 0 and b >= 0:
            return round(a + b * size, 1)
    return round(statistics.median(d / s for s, d in pts) * size, 1)


def rto_ok(forecast_s: float | None, rto_hours: dict[int, float]) -> dict[str, bool] | None:
    if forecast_s is None:
        return None
    return {str(sev): forecast_s <= hours * 3600 for sev, hours in sorted(rto_hours.items())}


async def proof_of(services: Resources, target: str, archives: list[Archive],
                   now: datetime) -> Proof:
    """The target's proof, from its catalogue (``archives``) and its jobs."""
    async with services.pool.acquire() as conn:
        passes = await proof_sql.restore_passes(conn, target)
        history = await proof_sql.restore_history(conn, target, HISTORY)
        used = await proof_sql.continuous_queued(conn, target, *day_of(now))
    good = sorted((a for a in archives if is_good(a)), key=_age, reverse=True)
    last = next(((a.backup_id, passes[a.backup_id]) for a in good if a.backup_id in passes),
                None)
    sizes = {a.backup_id: float(a.size_bytes) for a in archives}
    points = [(r["kind"], _size(r, sizes), took) for r in history
              if (took := _restore_s(r)) is not None]
    restores = any(kind == "restore" for kind, _, _ in points)
    usable = [(s, d) for kind, s, d in points
              if s is not None and (kind == "restore" or not restores)]
    expected = forecast(usable, good[0].size_bytes) if good else None
    return Proof(last_verified=last, unverified=len(to_prove(archives, passes)),
                 forecast_s=expected, used_today=used)


def _restore_s(row: Any) -> float | None:
    """What the job says a restore of its archive takes (see the module's notes)."""
    phases = row["phases"]
    if row["kind"] == "verify" and isinstance(phases, dict) and phases and all(
            _seconds(v) for v in phases.values()):
        core = sum(v for k, v in phases.items() if k not in VERIFY_ONLY)
        checks = min(phases.get(Step.COMPARE, 0.0), phases.get(Step.RESTORE, 0.0) / 2)
        return float(core + checks)
    return None if row["duration_s"] is None else float(row["duration_s"])


def _seconds(value: Any) -> bool:
    """A number of seconds a double holds (a record's JSON may say anything)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _size(row: Any, sizes: dict[str, float]) -> float | None:
    """The archive's size as its backup job recorded it, else as storage lists it."""
    size = row["size_bytes"]
    return float(size) if size is not None else sizes.get(row["backup_id"])


async def continuous_params(services: Resources, target: str,
                            now: datetime) -> list[dict[str, Any]] | str:
    """The restore tests this slot queues, or why there are none. Raises what the catalogue
    raises (storage unreachable)."""
    budget = services.settings.targets[target].verify_budget_per_day
    archives = await catalogue(services, target)
    async with services.pool.acquire() as conn:
        passes = await proof_sql.restore_passes(conn, target)
        used = await proof_sql.continuous_queued(conn, target, *day_of(now))
        in_use = await jobs_repo.archives_in_use(conn, target)
    pending = to_prove(archives, passes)
    if not any(a.complete for a in archives):
        return "skipped: no complete archive to verify"
    if not pending:
        return "skipped: every complete archive is proven"
    if used >= budget:
        return f"skipped: today's budget of {budget} restore test(s) is used"
    todo = [a for a in pending if a.backup_id not in in_use][:budget - used]
    if not todo:
        return "skipped: the unverified archives are being read now"
    return [{"backup_id": a.backup_id, "level": "restore", "continuous": True} for a in todo]


async def status_fields(services: Resources, target: str, now: datetime) -> dict[str, Any]:
    """Target status's proof fields and its count of suspect archives; null when storage cannot
    be read within :data:`LIST_TIMEOUT_S` (the status still answers)."""
    cfg = services.settings.targets[target]
    cron = cfg.effective_schedules().get("verify", "")
    fields: dict[str, Any] = {}
    used: int | None = None
    try:
        archives = await asyncio.wait_for(catalogue(services, target), LIST_TIMEOUT_S)
        found = await proof_of(services, target, archives, now)
    except (PgVaultError, TimeoutError) as exc:
        log.warning("proof_unknown", target=target, error=getattr(exc, "detail", "timed out"))
    else:
        used = found.used_today
        # From this same listing: a second one would double the wait when storage hangs.
        fields = {
            "suspect_archives": sum(1 for a in archives if a.complete and a.suspect),
            "last_verified_backup": VerifiedBackup(backup_id=found.last_verified[0],
                                                   at=found.last_verified[1])
            if found.last_verified else None,
            "unverified_archives": found.unverified,
            "restore_forecast_s": found.forecast_s,
            "rto_forecast_ok": rto_ok(found.forecast_s, services.settings.rto_hours)}
    fields["verification_schedule"] = VerificationSchedule(
        verify_every_archive=cfg.verify_every_archive,
        verify_budget_per_day=cfg.verify_budget_per_day, used_today=used, cron=cron,
        next_at=croniter(cron, now).get_next(datetime) if cron else None)
    return fields
