"""Maintenance work on a target: ANALYZE and materialized view refreshes.

Both take a read-write asyncpg connection to the target, outside any transaction block
(``REFRESH MATERIALIZED VIEW CONCURRENTLY`` and a database-wide ``ANALYZE`` must not be wrapped
in one by us). A statement that fails becomes :class:`~app.errors.StepFailed` naming the step and
the SQLSTATE; the server's message is left out since it can quote row values.

Names reach SQL only as the server quoted them: each REFRESH statement is built by ``format()``
with ``%I`` from the catalog, never by Python string formatting.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import structlog

from app.errors import StepFailed
from app.integrations import pg_errors

log = structlog.get_logger("pgvault.maintenance")

SERVER_NOW_SQL = "SELECT clock_timestamp()"

ANALYZE_SQL = "ANALYZE"

COUNT_ANALYZED_SQL = """
SELECT count(*)::bigint FROM pg_stat_user_tables WHERE last_analyze >= $1
"""

# CONCURRENTLY needs a populated view and a unique index the refresh can match rows with:
# valid, immediate, no WHERE clause, only plain columns (the conditions of PostgreSQL's
# is_usable_unique_index()).
MATVIEWS_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS name,
       conc.usable AS concurrently,
       format('REFRESH MATERIALIZED VIEW %s%I.%I',
              CASE WHEN conc.usable THEN 'CONCURRENTLY ' ELSE '' END,
              n.nspname, c.relname) AS statement
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT c.relispopulated AND EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = c.oid
          AND i.indisunique AND i.indisvalid AND i.indimmediate
          AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts > 0
    ) AS usable
) AS conc
WHERE c.relkind = 'm' AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
ORDER BY n.nspname, c.relname
"""


def _failure(exc: asyncpg.exceptions.PostgresError) -> str:
    return pg_errors.describe(exc)


async def analyze(conn: Any) -> dict[str, Any]:
    """ANALYZE the whole database; returns how many user tables were analyzed and how long."""
    started = time.monotonic()
    try:
        since = await conn.fetchval(SERVER_NOW_SQL)
        await conn.execute(ANALYZE_SQL)
        analyzed = await conn.fetchval(COUNT_ANALYZED_SQL, since)
    except asyncpg.exceptions.PostgresError as exc:
        raise StepFailed("analyze", _failure(exc)) from None
    duration = round(time.monotonic() - started, 3)
    log.info("analyze_done", tables=analyzed, duration_s=duration)
    return {"tables_analyzed": analyzed, "duration_s": duration}


async def refresh_materialized_views(conn: Any) -> list[dict[str, Any]]:
    """Refresh every materialized view, CONCURRENTLY where the view allows it."""
    try:
        views = await conn.fetch(MATVIEWS_SQL)
    except asyncpg.exceptions.PostgresError as exc:
        raise StepFailed("list materialized views", _failure(exc)) from None
    done: list[dict[str, Any]] = []
    for view in views:
        started = time.monotonic()
        try:
            # No arguments: sent as a simple query, in autocommit.
            await conn.execute(view["statement"])
        except asyncpg.exceptions.PostgresError as exc:
            raise StepFailed(f"refresh {view['name']}", _failure(exc)) from None
        duration = round(time.monotonic() - started, 3)
        log.info("matview_refreshed", view=view["name"], concurrently=view["concurrently"],
                 duration_s=duration)
        done.append({"name": view["name"], "concurrently": view["concurrently"],
                     "duration_s": duration})
    return done
