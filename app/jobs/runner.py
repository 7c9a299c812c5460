"""The job runner: claims queued jobs, runs them, keeps their leases, reaps dead workers' jobs.

Each replica runs one :class:`JobRunner`. Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` so
replicas never run the same job; a running job's lease is renewed by a heartbeat, and a job whose
lease expired (its worker crashed, was killed or lost its host) is marked failed by any replica's
reaper, which also undoes what the job registered as pending cleanup (a multipart upload, a scratch
database). Cancellation is a flag in the job row that the owning worker sees on its next heartbeat;
the job's task is then cancelled, and the command's own ``finally`` blocks kill its processes.

However a job ends short of success (failure, cancel, shutdown, lost lease), the runner then ends
its server-side work -- the target's backends carrying the job's application_name, which a killed
psql leaves running -- and undoes what the job's cleanup notes still list, as a reaper would.
What a command put in ``ctx.result`` is kept in the result of a job that did not succeed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from typing import Any
from uuid import UUID

import structlog

from app.audit import repository as audit_repo
from app.errors import PgVaultError, StepFailed
from app.integrations import pg_errors
from app.integrations.target_db import JOB_APPLICATION_NAME, end_backends
from app.jobs import repository as repo
from app.jobs import summaries, watchdog
from app.jobs.context import Cleanup, Handler, JobContext
from app.jobs.schemas import Job
from app.loops import LoopService
from app.resources import Resources
from app.security import redact

log = structlog.get_logger("pgvault.jobs")

# How long undoing a job's leftovers (storage deletes, a DROP DATABASE) may hold its ending.
CLEANUP_BOUND_S = 60.0


class JobRunner:
    def __init__(self, services: Resources, handlers: dict[str, Handler],
                 cleanups: dict[str, Cleanup]) -> None:
        self.services = services
        self.settings = services.settings
        self.handlers = handlers
        self.cleanups = cleanups
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.running: dict[UUID, tuple[asyncio.Task[None], JobContext]] = {}
        self._stopping = False
        self._last_renew = 0.0
        settings = self.settings
        self._claimer = LoopService("jobs-claim", self._claim_once,
                                    interval_s=settings.poll_interval_s, log=log,
                                    failed_event="jobs_claim_failed")
        self._heartbeat = LoopService(
            "jobs-heartbeat", self._heartbeat_once,
            interval_s=min(settings.progress_interval_s, settings.lease_seconds / 3), log=log,
            failed_event="jobs_heartbeat_failed", wait_first=True)
        self._reaper = LoopService("jobs-reaper", self.reap,
                                   interval_s=max(1.0, settings.lease_seconds / 2), log=log,
                                   failed_event="jobs_reap_failed")
        self._watchdog = watchdog.Watchdog(
            services, lambda: [ctx for _, ctx in self.running.values()],
            lambda ctx: self._cancel(ctx.job_id, "stalled"))
        self._watch = LoopService("jobs-watchdog", self._watchdog.check_once,
                                  interval_s=watchdog.interval_s(settings.stall_timeout_s),
                                  log=log, failed_event="jobs_watchdog_failed", wait_first=True)
        services.runner.attach(self)

    def start(self) -> None:
        for loop in (self._claimer, self._heartbeat, self._reaper, self._watch):
            loop.start()

    def wake(self) -> None:
        """A job was just queued here: look for it now rather than at the next poll."""
        self._claimer.wake()

    def runs(self, job_id: UUID) -> bool:
        return job_id in self.running

    async def stop(self) -> None:
        """Stop claiming; give running jobs the grace period, then cancel them."""
        self._stopping = True
        tasks = [task for task, _ in self.running.values()]
        if tasks:
            log.info("jobs_draining", running=len(tasks), grace_s=self.settings.shutdown_grace_s)
            _, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for job_id, (task, _) in list(self.running.items()):
                if task in pending:
                    self._cancel(job_id, "cancelled: the service shut down before the job "
                                         "finished")
            if pending:
                await asyncio.wait(pending)
        # The heartbeat and claim loops go last: running jobs needed their leases renewed.
        await asyncio.gather(*(loop.stop() for loop in
                               (self._claimer, self._heartbeat, self._reaper, self._watch)))

    # -- loops -----------------------------------------------------------------------------

    async def _claim_once(self) -> bool:
        """Claim one job if there is room; whether one was claimed (then look again at once)."""
        if self._stopping or len(self.running) >= self.settings.worker_concurrency:
            return False
        async with self.services.pool.acquire() as conn:
            row = await repo.claim_next(conn, owner=self.owner,
                                        lease_s=self.settings.lease_seconds,
                                        targets=list(self.settings.targets))
        if row is None or self._stopping:
            return False
        self._launch(row)
        return True

    async def _heartbeat_once(self) -> None:
        for _, ctx in list(self.running.values()):
            await ctx.flush_progress()
        if time.monotonic() - self._last_renew >= self.settings.lease_seconds / 3:
            self._last_renew = time.monotonic()
            await self._renew()

    async def _renew(self) -> None:
        if not self.running:
            return
        async with self.services.pool.acquire() as conn:
            rows = await repo.renew_leases(conn, owner=self.owner, ids=list(self.running),
                                           lease_s=self.settings.lease_seconds)
        for row in rows:
            if row["cancel_requested"] and row["id"] in self.running:
                self._cancel(row["id"])
        # A job the renewal did not return was reaped elsewhere (we were cut off for longer than
        # the lease): stop it, its clean-up is already another replica's business.
        renewed = {row["id"] for row in rows}
        for job_id in list(self.running):
            if job_id not in renewed:
                self._cancel(job_id, "cancelled: this worker lost the job's lease")

    def _cancel(self, job_id: UUID, reason: str | None = None) -> None:
        """Cancel a job's task once: a second cancel would cut its shielded cleanup short."""
        entry = self.running.get(job_id)
        if entry is None or entry[1].cancelling:
            return
        task, ctx = entry
        ctx.cancelling = True
        if reason:
            ctx.cancel_reason = reason
        task.cancel()

    async def check_cancel_now(self) -> None:
        """Renew leases and act on cancel flags at once (used by the cancel endpoint)."""
        await self._renew()

    async def reap(self) -> int:
        async with self.services.pool.acquire() as conn:
            rows = await repo.reap_expired(conn)
            for row in rows:
                await audit_repo.insert(conn, actor="pgvault", action=f"job.{row['kind']}",
                                        target=row["target"], outcome="failed",
                                        job_id=row["id"], details={"reason": "worker lost"})
        for row in rows:
            log.warning("job_reaped", job_id=str(row["id"]), phase=row["phase"])
            if not row["cleanup"]:
                continue
            done, facts = await self._undo(row["id"], row["kind"], row["target"],
                                           row["cleanup"])
            if done:
                async with self.services.pool.acquire() as conn:
                    await repo.clear_cleanup(conn, row["id"], facts)
        return len(rows)

    async def _undo(self, job_id: UUID, kind: str, target: str,
                    notes: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """End a job's backends on its target (after its processes are gone: killed, or dead
        with their worker), then undo what its cleanup notes list. Bounded; returns whether
        all of it was done, and what the cleanup reports for the job's result."""
        name = notes.get("application_name")
        if name and target in self.settings.targets:
            await end_backends(self.settings.targets[target].parsed_dsn, name)
        cleanup = self.cleanups.get(kind)
        rest = {k: v for k, v in notes.items() if k != "application_name"}
        if cleanup is None or not rest:
            return True, {}
        try:
            async with asyncio.timeout(CLEANUP_BOUND_S):
                return True, await cleanup(self.services, rest, target) or {}
        except Exception as exc:
            log.warning("job_cleanup_failed", job_id=str(job_id), error_type=type(exc).__name__)
            return False, {}

    # -- one job ---------------------------------------------------------------------------

    def _launch(self, row: Any) -> None:
        ctx = JobContext(row, self.services, self.owner)
        task = asyncio.create_task(self._execute(ctx), name=f"job-{ctx.job_id}")
        self.running[ctx.job_id] = (task, ctx)
        task.add_done_callback(lambda _: self.running.pop(ctx.job_id, None))

    async def _execute(self, ctx: JobContext) -> None:
        started = time.monotonic()
        handler = self.handlers[ctx.kind]
        status, summary = "failed", ""
        result: dict[str, Any] = {}
        error: dict[str, str] | None = None
        secrets_ = self.settings.secrets()
        JOB_APPLICATION_NAME.set(ctx.application_name)  # this task's context only
        try:
            ctx.log.info("job_started")
            await ctx.note_cleanup("application_name", ctx.application_name)
            await ctx.flush_progress()  # "queued" no more: say it started
            result, summary = await handler(ctx)
            status = "succeeded"
        except asyncio.CancelledError:
            status = "cancelled"
            error = {"title": "Cancelled", "detail": ctx.cancel_reason}
            summary = summaries.cancelled(ctx.kind, ctx.target, ctx.params, phase=ctx.phase,
                                          reason=ctx.cancel_reason)
        except StepFailed as exc:
            error = {"title": f"{ctx.kind.capitalize()} failed",
                     "detail": redact(exc.detail, secrets_)}
            summary = summaries.failed(ctx.kind, ctx.target, ctx.params, step=exc.step,
                                       cause=redact(exc.cause, secrets_))
            result = {"failed_step": exc.step}
        except PgVaultError as exc:
            error = {"title": exc.title, "detail": redact(exc.detail, secrets_)}
            summary = summaries.failed(ctx.kind, ctx.target, ctx.params, step=ctx.phase,
                                       cause=redact(exc.detail, secrets_))
        except Exception as exc:
            ctx.log.exception("job_crashed")
            if pg_errors.is_database_error(exc):  # a database or network error no step caught
                cause = redact(pg_errors.describe(exc), secrets_)
                error = {"title": f"{ctx.kind.capitalize()} failed",
                         "detail": f"{ctx.phase}: {cause}"}
            else:
                cause = "an internal error; see the service log"
                error = {"title": "Internal error",
                         "detail": f"unexpected {type(exc).__name__} at phase {ctx.phase}; see "
                                   "the service log"}
            summary = summaries.failed(ctx.kind, ctx.target, ctx.params, step=ctx.phase,
                                       cause=cause)
        if ctx.stalled is not None and status != "succeeded":  # however the cancel surfaced
            status, result = "failed", {}
            error, summary = watchdog.ending(ctx)
        duration = time.monotonic() - started
        ctx._close_phase()
        ctx.keep_final_progress()
        if status != "succeeded":
            result = {**ctx.result, **result}
        result = {**result, "phase_durations_s": ctx.phase_durations}
        # One shielded step: a cancel landing during the clean-up must not skip the record.
        await asyncio.shield(self._end(ctx, status, result, error, summary, duration))

    async def _end(self, ctx: JobContext, status: str, result: dict[str, Any],
                   error: dict[str, str] | None, summary: str, duration: float) -> None:
        if status != "succeeded":
            _, facts = await self._undo(ctx.job_id, ctx.kind, ctx.target, ctx.cleanup)
            result = {**result, **facts}
        await self._record(ctx, status, result, error, summary, duration)

    async def _record(self, ctx: JobContext, status: str, result: dict[str, Any],
                      error: dict[str, str] | None, summary: str, duration: float) -> None:
        try:
            async with self.services.pool.acquire() as conn, conn.transaction():
                await ctx.flush_progress()
                row = await repo.finish(conn, ctx.job_id, status=status, result=result,
                                        error=error, summary=summary, owner=self.owner)
                if row is not None:
                    await audit_repo.insert(conn, actor=ctx.requested_by,
                                            action=f"job.{ctx.kind}", target=ctx.target,
                                            outcome=status, job_id=ctx.job_id,
                                            details={"summary": summary})
            ctx.log.info("job_finished", status=status, duration_s=round(duration, 3))
            if row is not None:
                job = Job.from_row(row).model_dump(mode="json")
                payload = {"target": ctx.target, "summary": summary, "job": job}
                self.services.notifier.emit(f"job.{status}", payload)
                if ctx.stalled is not None and status == "failed":
                    self.services.notifier.emit("job.stalled", payload)
        except Exception as exc:  # the lease will expire and the reaper will record it
            ctx.log.error("job_record_failed", error_type=type(exc).__name__)
