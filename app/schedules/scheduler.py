"""The scheduler (SPEC 2.6) and the periodic chores: RPO-breach alerts and audit purging.

Every replica ticks; each slot of each schedule is claimed in ``schedule_slots`` (primary key
``(target, kind, slot)``), so it fires once however many replicas run. A tick looks only at the
latest slot due, so slots missed while the service was down fire once at start, not once each.
The first tick that ever sees a schedule records its latest slot without firing it: a new
deployment does not start every job at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from croniter import croniter

from app.archives.service import catalogue
from app.audit import repository as audit_repo
from app.errors import Conflict, PgVaultError
from app.jobs import repository as jobs_repo
from app.jobs import service as jobs
from app.loops import LoopService
from app.resources import Resources
from app.schedules import repository as repo
from app.security import Principal
from app.targets import proof
from app.targets.rpo import good_backup, within_rpo

log = structlog.get_logger("pgvault.scheduler")

SCHEDULER = Principal("scheduler", "admin")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AUDIT_PURGE_EVERY_S = 3600.0


class Scheduler:
    def __init__(self, services: Resources) -> None:
        self.services = services
        self.settings = services.settings
        self._last_purge: datetime | None = None
        self._loop = LoopService("scheduler", self.tick,
                                 interval_s=self.settings.schedule_interval_s, log=log,
                                 failed_event="scheduler_tick_failed")

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Fire every slot that is due and not yet claimed; returns what this tick did."""
        now = now or datetime.now(UTC)
        done: list[dict[str, Any]] = []
        for target, cfg in self.settings.targets.items():
            for kind, expr in cfg.effective_schedules().items():
                if not expr:
                    continue
                slot: datetime = croniter(expr, now).get_prev(datetime)
                async with self.services.pool.acquire() as conn:
                    if await repo.is_claimed(conn, target, kind, slot):
                        continue  # the usual case: nothing due since the last tick
                params = await self._params(target, kind, now)
                # Claim and job in one transaction: a crash between them cannot lose the slot.
                async with self.services.pool.acquire() as conn, conn.transaction():
                    first = not await repo.has_any(conn, target, kind)
                    outcome = "baseline" if first else "firing"
                    if not await repo.claim(conn, target, kind, slot, outcome):
                        continue
                    if first:
                        continue
                    outcome, job_id = await self._fire(conn, target, kind, params)
                    await repo.settle(conn, target, kind, slot, outcome, job_id)
                if job_id is not None:
                    self.services.runner.wake()
                log.info("schedule_fired", target=target, kind=kind, slot=slot.isoformat(),
                         outcome=outcome)
                done.append({"target": target, "kind": kind, "slot": slot, "outcome": outcome,
                             "job_id": job_id})
        await self.check_rpo(now)
        await self._purge_audit(now)
        return done

    async def _params(self, target: str, kind: str,
                      now: datetime) -> dict[str, Any] | list[dict[str, Any]] | str:
        """The job's parameters (several jobs': a list), or why there is nothing to run."""
        if kind == "backup":
            return {"scheduled": True}
        if kind == "retention":
            return {"dry_run": False}
        if kind == "maintenance":
            return {"task": "analyze"}
        if kind == "reconcile":
            return {"deep": False}
        if self.settings.targets[target].verify_every_archive:
            try:  # continuous proof: the unverified archives, oldest first, within the budget
                return await proof.continuous_params(self.services, target, now)
            except PgVaultError as exc:
                return f"skipped: {exc.detail}"
        # verify: the monthly restore test of the newest complete archive
        try:
            archives = [a for a in await catalogue(self.services, target) if a.complete]
        except PgVaultError as exc:
            return f"skipped: {exc.detail}"
        if not archives:
            return "skipped: no complete archive to verify"
        return {"backup_id": archives[0].backup_id, "level": "restore"}

    async def _fire(self, conn: Any, target: str, kind: str,
                    params: dict[str, Any] | list[dict[str, Any]] | str
                    ) -> tuple[str, UUID | None]:
        if isinstance(params, str):
            return params, None
        if isinstance(params, list):  # several restore tests: the slot records the first
            fired = [await self._fire(conn, target, kind, p) for p in params]
            return fired[0][0], fired[0][1]
        try:
            row = await jobs.insert_in(conn, SCHEDULER, kind=kind, target=target, params=params,
                                       summary=f"scheduled {kind} of {target}")
        except Conflict as exc:
            return f"skipped: {exc.detail}", None
        return "queued", row["id"]

    async def check_rpo(self, now: datetime) -> list[str]:
        """Alert once per breach: the breach is keyed by the last good backup's time."""
        names = sorted(self.settings.targets)
        async with self.services.pool.acquire() as conn:
            last = {r["target"]: r for r in await jobs_repo.last_succeeded(conn, "backup", names)}
        breached = []
        for name in names:
            good = good_backup(last.get(name))
            finished = good.finished_at if good else None
            age = None if finished is None else (now - finished).total_seconds()
            if within_rpo(age, self.settings.rpo_hours):
                continue
            async with self.services.pool.acquire() as conn:
                if not await repo.claim(conn, name, "rpo_breach", finished or EPOCH, "alerted"):
                    continue
            breached.append(name)
            summary = (f"RPO breached for {name}: "
                       + ("no successful backup yet" if age is None else
                          f"last good backup {age / 3600:.1f} h ago")
                       + f" (RPO {self.settings.rpo_hours:g} h)")
            log.warning("rpo_breach", target=name, age_s=age)
            self.services.notifier.emit("rpo.breach", {
                "target": name, "summary": summary, "rpo_hours": self.settings.rpo_hours,
                "last_backup_finished_at": finished.isoformat() if finished else None})
        return breached

    async def _purge_audit(self, now: datetime) -> None:
        if self._last_purge and (now - self._last_purge).total_seconds() < AUDIT_PURGE_EVERY_S:
            return
        self._last_purge = now
        async with self.services.pool.acquire() as conn:
            purged = await audit_repo.purge(conn, self.settings.audit_retention_days)
        if purged:
            log.info("audit_purged", events=purged)
