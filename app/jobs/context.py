"""What a running command sees of its job (:class:`JobContext`), and the shapes of a command
(:data:`Handler`) and of what undoes a dead worker's leftovers (:data:`Cleanup`).

Commands import this module; the runner that builds a context sits above them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import structlog

from app.errors import StepFailed
from app.integrations.target_db import job_application_name
from app.jobs import repository as repo
from app.jobs import summaries
from app.resources import Resources
from app.steps import Step

log = structlog.get_logger("pgvault.jobs")

Handler = Callable[["JobContext"], Awaitable[tuple[dict[str, Any], str]]]
# Undoes a job's leftovers from its cleanup notes; returns facts for the job's result (e.g.
# ``{"database": ..., "database_dropped": true}``).
Cleanup = Callable[[Resources, dict[str, Any], str], Awaitable[dict[str, Any] | None]]


class JobContext:
    """What a running command sees of its job: parameters, progress reporting, cleanup notes."""

    def __init__(self, row: Any, services: Resources, owner: str) -> None:
        self.owner = owner
        self.job_id: UUID = row["id"]
        self.kind: str = row["kind"]
        self.target: str = row["target"]
        self.params: dict[str, Any] = row["params"] or {}
        self.requested_by: str = row["requested_by"]
        self.services = services
        self.log = log.bind(job_id=str(self.job_id), kind=self.kind, target=self.target)
        self.phase: str = Step.STARTING
        self.bytes_done = 0
        self.bytes_total: int | None = None
        self.bytes_uploaded = 0
        self._flushed: tuple[str, int, int | None, int] | None = None
        # The last phase that moved bytes (a dump, a download): a finished job shows it, not the
        # empty counters of the short step that came after.
        self._last_stream: tuple[int, int | None, int] | None = None
        self.cleanup: dict[str, Any] = {}
        # What the job's result must say even if it fails or is cancelled (e.g. whether the
        # database a restore created was dropped); merged into the recorded result.
        self.result: dict[str, Any] = {}
        self.application_name = job_application_name(self.kind, self.job_id)
        self.cancel_reason = "cancelled on request"
        self.cancelling = False
        self.phase_started = time.monotonic()
        self.phase_durations: dict[str, float] = {}
        # The stall watchdog's clock (app/jobs/watchdog.py): when the job last showed progress;
        # and, once it stopped the job as stalled: seconds without progress, phase, and what its
        # server backends were waiting on ("" when nothing was seen).
        self.last_progress = time.monotonic()
        self.stalled: tuple[float, str, str] | None = None

    def progress(self, *, bytes_done: int | None = None, bytes_total: int | None = None,
                 bytes_uploaded: int | None = None) -> None:
        """Record progress; the runner writes it to the database at most every interval."""
        before = (self.bytes_done, self.bytes_total, self.bytes_uploaded)
        if bytes_done is not None:
            self.bytes_done = bytes_done
        if bytes_uploaded is not None:
            self.bytes_uploaded = bytes_uploaded
        if bytes_total is not None:
            self.bytes_total = bytes_total
        if (self.bytes_done, self.bytes_total, self.bytes_uploaded) != before:
            self.alive()

    def alive(self) -> None:
        """Progress the counters do not show (a step known to be working): the stall watchdog
        restarts its clock."""
        self.last_progress = time.monotonic()

    async def set_phase(self, phase: Step | str, *, bytes_total: int | None = None) -> None:
        self._close_phase()
        if self.bytes_done or self.bytes_uploaded:
            self._last_stream = (self.bytes_done, self.bytes_total, self.bytes_uploaded)
        self.phase = phase
        self.bytes_done = 0
        self.bytes_uploaded = 0
        self.bytes_total = bytes_total
        self.alive()
        self.log.info("job_phase", phase=phase)
        await self.flush_progress()

    def _close_phase(self) -> None:
        now = time.monotonic()
        spent = self.phase_durations.get(self.phase, 0.0) + now - self.phase_started
        self.phase_durations[self.phase] = round(spent, 3)
        self.phase_started = now

    def keep_final_progress(self) -> None:
        """At the end: a last step that moved no bytes shows the last stream's counters."""
        if not (self.bytes_done or self.bytes_uploaded) and self._last_stream is not None:
            self.bytes_done, self.bytes_total, self.bytes_uploaded = self._last_stream

    def summary(self) -> str:
        return summaries.running(self.kind, self.target, self.params, phase=self.phase,
                                 bytes_done=self.bytes_done, bytes_total=self.bytes_total,
                                 bytes_uploaded=self.bytes_uploaded)

    async def flush_progress(self) -> None:
        state = (self.phase, self.bytes_done, self.bytes_total, self.bytes_uploaded)
        if state == self._flushed:
            return
        self._flushed = state
        async with self.services.pool.acquire() as conn:
            await repo.update_progress(conn, self.job_id, phase=self.phase,
                                       bytes_done=self.bytes_done, bytes_total=self.bytes_total,
                                       bytes_uploaded=self.bytes_uploaded,
                                       summary=self.summary())

    async def assert_lease(self) -> None:
        """Raise unless this worker still holds the job's lease, renewing it (around an
        irreversible step)."""
        async with self.services.pool.acquire() as conn:
            if not await repo.renew_if_held(conn, self.job_id, self.owner,
                                            self.services.settings.lease_seconds):
                raise StepFailed(Step.LEASE, "this worker lost the job's lease; another replica "
                                             "has taken over its clean-up")

    async def note_cleanup(self, key: str, value: Any | None) -> None:
        """Record (or, with ``None``, forget) something the reaper must undo if we die."""
        if value is None:
            self.cleanup.pop(key, None)
        else:
            self.cleanup[key] = value
        async with self.services.pool.acquire() as conn:
            await repo.set_cleanup(conn, self.job_id, self.cleanup)
