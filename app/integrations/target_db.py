"""Connections to target databases for commands (backup, restore, maintenance), and the end of
a job's server-side work.

Monitoring uses its own small pools (app.monitoring.service); commands open one connection each.
A failure to connect becomes a :class:`StepFailed` naming host, port and database, never the DSN.

Every connection a job makes to a target -- asyncpg here, and libpq tools through ``PGAPPNAME``
(``app.integrations.pg_tools``) -- carries the job's ``application_name``
(``pgvault/<kind>/<job id>``, set for the job's task by the runner in :data:`JOB_APPLICATION_NAME`).
Killing psql or pg_restore does not stop its backend: a backend busy with ``CREATE INDEX`` only
notices its client is gone when the statement ends, holding its locks until then.
:func:`end_backends` finds those backends by that name and cancels, then terminates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar

import asyncpg
import structlog

from app.config import PgDsn
from app.errors import StepFailed
from app.integrations import pg_errors
from app.steps import Step

log = structlog.get_logger("pgvault.target_db")

# The application_name of the job the current task works for; None outside jobs (requests,
# monitoring, the reaper), whose connections are plain "pgvault".
JOB_APPLICATION_NAME: ContextVar[str | None] = ContextVar("job_application_name", default=None)

# A backend that a cancel did not end within this long is terminated; one that outlives the
# whole bound is reported, not waited for.
CANCEL_GRACE_S = 1.5
END_BACKENDS_BOUND_S = 10.0

T = TypeVar("T")


def job_application_name(kind: str, job_id: object) -> str:
    """``pgvault/<kind>/<job uuid>``: at most 56 characters, within NAMEDATALEN."""
    return f"pgvault/{kind}/{job_id}"


def application_name() -> str:
    return JOB_APPLICATION_NAME.get() or "pgvault"


async def connect_target(dsn: PgDsn, database: str | None = None, timeout: float = 15,
                         settings: dict[str, str] | None = None) -> Any:
    """A connection to a target database, or a :class:`StepFailed` naming the target's host."""
    try:
        return await asyncpg.connect(**dsn.asyncpg_kwargs(database), timeout=timeout,
                                     server_settings={**(settings or {}),
                                                      "application_name": application_name()})
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = pg_errors.describe_for(exc, dsn, database)
        raise StepFailed(Step.CONNECT, f"cannot connect to {dsn.host}:{dsn.port}/"
                                       f"{database or dsn.database}: {reason}") from None


async def uninterrupted(awaitable: Awaitable[T]) -> T:
    """Await a server-side step that must not be left half-known (``CREATE DATABASE``): a cancel
    that lands meanwhile waits for the step's outcome, then is raised. Cancelling the await
    instead would leave the statement running on the server, its result unknown to us."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


END_SQL = """
SELECT count(*) FILTER (WHERE {fn}(pid)) AS signalled, count(*) AS found
FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()"""


async def end_backends(dsn: PgDsn, name: str) -> int:
    """Cancel, then terminate, every backend on ``dsn``'s server whose application_name is
    ``name``; returns how many there were. Run after the job's child processes are killed, on a
    connection of its own, within :data:`END_BACKENDS_BOUND_S`; shield it from cancellation."""
    conn = None
    try:
        async with asyncio.timeout(END_BACKENDS_BOUND_S):
            conn = await asyncpg.connect(**dsn.asyncpg_kwargs(), timeout=5, server_settings={
                "application_name": "pgvault/cleanup"})
            row = await conn.fetchrow(END_SQL.format(fn="pg_cancel_backend"), name)
            found = int(row["found"])
            if not found:
                return 0
            deadline = time.monotonic() + CANCEL_GRACE_S
            terminated = False
            while True:
                left = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE "
                                           "application_name = $1", name)
                if not left:
                    break
                if not terminated and time.monotonic() >= deadline:
                    await conn.fetchrow(END_SQL.format(fn="pg_terminate_backend"), name)
                    terminated = True
                await asyncio.sleep(0.1)
            log.info("job_backends_ended", application_name=name, backends=found,
                     terminated=terminated)
            return found
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("job_backends_not_ended", application_name=name,
                    error_type=type(exc).__name__)
        return 0
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
