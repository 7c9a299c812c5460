"""The stall watchdog (SPEC 2.14): a running job whose phase and progress have not changed for
``stall_timeout_s`` fails with error title ``stalled``.

Each replica watches the jobs it runs itself, every :func:`interval_s` seconds. A job shows that it
moves in two ways:

- its own reports: a phase change or changed counters (``JobContext.set_phase``/``progress``), or
  ``JobContext.alive()`` from a step known to be working;
- its server-side work, read with one query per target and pass (``app.integrations.job_backends``,
  on the target's small monitoring pool): a backend carrying the job's application_name that is
  working (active, waiting neither on a lock nor on its client), or whose progress-view counters
  moved. In the phases that report no counters of their own (pg_restore's, ANALYZE) those counters
  (bytes copied in, table blocks read by index builds and ANALYZE) become the job's ``bytes_done``.

So a long ``CREATE INDEX`` during a restore keeps its job alive, while a pg_dump waiting on another
session's lock, or a dump whose storage stopped answering (pg_dump's COPY then waits on its client
and nothing is uploaded), does not. A poll that fails proves nothing: the job must show progress
some other way.

A stalled job is marked (``ctx.stalled``) and cancelled through the runner: the command's own
cleanup kills its processes and aborts its multipart upload, and the runner ends its server
backends, undoes its cleanup notes and records it as ``failed`` (see :func:`ending`), sending
``job.failed`` and then ``job.stalled``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog

from app.integrations import job_backends
from app.jobs import summaries
from app.jobs.context import JobContext
from app.resources import Resources
from app.steps import Step

log = structlog.get_logger("pgvault.jobs")

ERROR_TITLE = "stalled"

# Phases whose command reports no counters: the server's (bytes copied, blocks read) are theirs.
SERVER_PHASES = frozenset({Step.RESTORE, "analyze"})

# How long one pass may wait for a target's answer.
POLL_BOUND_S = 5.0


def interval_s(stall_timeout_s: float) -> float:
    """A few checks within the timeout, and never more than one query per job every 5 s."""
    return min(5.0, max(0.25, stall_timeout_s / 4))


@dataclass
class _Seen:
    """What the last poll saw of a job's backends."""

    phase: str
    counters: dict[tuple[int, str], int] = field(default_factory=dict)
    done: int = 0  # bytes of server work in this phase
    waits: str = ""  # what its idle backends wait on, in words


class Watchdog:
    def __init__(self, services: Resources, jobs: Callable[[], Iterable[JobContext]],
                 stop: Callable[[JobContext], None]) -> None:
        self.services = services
        self.timeout_s = services.settings.stall_timeout_s
        self._jobs = jobs
        self._stop = stop
        self._seen: dict[UUID, _Seen] = {}

    async def check_once(self) -> None:
        jobs = [ctx for ctx in self._jobs() if not ctx.cancelling]
        ids = {ctx.job_id for ctx in jobs}
        self._seen = {k: v for k, v in self._seen.items() if k in ids}
        by_target: dict[str, list[JobContext]] = {}
        for ctx in jobs:
            by_target.setdefault(ctx.target, []).append(ctx)
        await asyncio.gather(*(self._poll(t, ctxs) for t, ctxs in by_target.items()))
        now = time.monotonic()
        for ctx in jobs:
            idle = now - ctx.last_progress
            if idle >= self.timeout_s and not ctx.cancelling:
                seen = self._seen.get(ctx.job_id)
                ctx.stalled = (idle, ctx.phase, seen.waits if seen else "")
                ctx.log.warning("job_stalled", phase=ctx.phase, idle_s=round(idle, 1),
                                stall_timeout_s=self.timeout_s)
                self._stop(ctx)

    async def _poll(self, target: str, jobs: list[JobContext]) -> None:
        if target not in self.services.settings.targets:
            return
        names = [ctx.application_name for ctx in jobs]

        async def read(conn: Any) -> list[job_backends.Backend]:
            return await job_backends.read(conn, names)

        try:
            async with asyncio.timeout(POLL_BOUND_S):
                found = await self.services.monitoring.run(target, read)
        except Exception as exc:  # unreachable, slow, refused: no proof of life this pass
            log.info("watchdog_poll_failed", target=target, error_type=type(exc).__name__)
            return
        for ctx in jobs:
            self._account(ctx, [b for b in found if b.name == ctx.application_name])

    def _account(self, ctx: JobContext, backends: list[job_backends.Backend]) -> None:
        seen = self._seen.get(ctx.job_id)
        if seen is None or seen.phase != ctx.phase:
            seen = self._seen[ctx.job_id] = _Seen(ctx.phase, seen.counters if seen else {})
        alive = False
        moved = 0
        counters: dict[tuple[int, str], int] = {}
        for backend in backends:
            alive = alive or backend.working
            for name, (value, unit) in backend.counters.items():
                key = (backend.pid, name)
                counters[key] = value
                before = seen.counters.get(key, 0)
                delta = value - before if value >= before else value  # a new command began
                if delta > 0:
                    alive = True
                    moved += delta * unit
        seen.counters = counters
        seen.waits = _waits(backends)
        if alive:
            ctx.alive()
        if moved and ctx.phase in SERVER_PHASES:
            seen.done += moved
            ctx.progress(bytes_done=seen.done)


_WAITS = {"Lock": "a lock another session holds", "Client": "pgvault's side (a stuck pipeline)"}


def _waits(backends: list[job_backends.Backend]) -> str:
    """What the job's active backends that do not work wait on, in words."""
    found = sorted({b.waits_on for b in backends if not b.working and b.waits_on})
    return ", ".join(_WAITS.get(w, w) for w in found)


def ending(ctx: JobContext) -> tuple[dict[str, str], str]:
    """The error and summary of a job the watchdog stopped."""
    assert ctx.stalled is not None
    idle, phase, waits = ctx.stalled
    timeout = ctx.services.settings.stall_timeout_s
    detail = (f"no progress for {idle:.0f} s at phase {phase} (stall_timeout_s is {timeout:g})"
              + (f"; its server backends were waiting on {waits}" if waits else "")
              + "; the job was stopped and its work undone (processes, server backends, open "
                "uploads, scratch databases)")
    return ({"title": ERROR_TITLE, "detail": detail},
            summaries.stalled(ctx.kind, ctx.target, ctx.params, idle_s=idle, phase=phase))
