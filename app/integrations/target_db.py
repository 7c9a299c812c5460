"""Connections to target databases for commands (backup, restore, maintenance).

Monitoring uses its own small pools (app.monitoring.service); commands open one connection each.
A failure to connect becomes a :class:`StepFailed` naming host, port and database, never the DSN.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from app.config import PgDsn
from app.errors import StepFailed
from app.integrations import pg_errors


async def connect_target(dsn: PgDsn, database: str | None = None, timeout: float = 15,
                         settings: dict[str, str] | None = None) -> Any:
    """A connection to a target database, or a :class:`StepFailed` naming the target's host."""
    try:
        return await asyncpg.connect(**dsn.asyncpg_kwargs(database), timeout=timeout,
                                     server_settings={"application_name": "pgvault",
                                                      **(settings or {})})
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        reason = pg_errors.describe_for(exc, dsn, database)
        raise StepFailed("connect", f"cannot connect to {dsn.host}:{dsn.port}/"
                                    f"{database or dsn.database}: {reason}") from None
