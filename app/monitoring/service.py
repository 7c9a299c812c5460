"""Monitoring views of a target, each run through a small read-only pool with a statement timeout.

Driver errors are translated here, once, by class or SQLSTATE (never by message text):

- the target refuses the connection or does not answer within ``monitoring_connect_timeout_s``
  -> :class:`~app.errors.Unavailable` (503), with a short reason and never the DSN; for one
  connect timeout afterwards the target is not tried again, so a crowd of callers does not
  queue behind a dead target;
- a query cancelled by ``statement_timeout`` (SQLSTATE 57014) or the client-side command
  timeout -> :class:`~app.errors.TimedOut` (504);
- a connection lost mid-call (target restarted, backend terminated): the pool's connections are
  expired and the call is tried once more on a fresh connection, so a restarted target answers
  again without any restart of pgvault.

Query text seen in ``pg_stat_activity`` may hold secrets: it is returned (truncated) to the
caller, never logged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from app.config import Settings
from app.errors import NotFound
from app.monitoring import repository as repo
from app.monitoring.pools import CONNECTION_LOST, MonitoringPools
from app.monitoring.schemas import MODELS, MonitoringView

log = structlog.get_logger("pgvault.monitoring")

T = TypeVar("T")

VIEWS = ("connections", "bloat", "indexes", "tables", "snapshot")
DEFAULT_LIMIT = 50

async def _connections(conn: Any, settings: Settings, limit: int) -> dict[str, Any]:
    totals = await repo.connection_totals(conn, long_query_seconds=settings.long_query_seconds)
    active = await repo.active_connections(
        conn, query_chars=settings.monitoring_query_max_chars, limit=limit)
    by_client = await repo.connections_by_client(conn, limit=limit)
    total, max_connections = totals["total"], totals["max_connections"]
    return {
        "total_connections": total,
        "max_connections": max_connections,
        "used_percent": round(100 * total / max_connections, 1) if max_connections else 0.0,
        "active_count": totals["active"],
        "long_running_count": totals["long_running"],
        "long_query_seconds": settings.long_query_seconds,
        "active": active,
        "by_client": by_client,
    }


async def _bloat(conn: Any, settings: Settings, limit: int) -> dict[str, Any]:
    return {
        "tables": await repo.table_bloat(conn, limit=limit),
        "indexes": await repo.index_bloat(conn, limit=limit),
    }


async def _indexes(conn: Any, settings: Settings, limit: int) -> dict[str, Any]:
    unused = await repo.unused_indexes(conn, limit=limit)
    invalid = await repo.invalid_indexes(conn, limit=limit)
    stats_since = await repo.stats_reset(conn)
    return {
        "unused_count": unused[0]["total_count"] if unused else 0,
        "unused_bytes": unused[0]["total_bytes"] if unused else 0,
        "invalid_count": invalid[0]["total_count"] if invalid else 0,
        "stats_reset": stats_since,
        "unused": [_without(row, "total_count", "total_bytes") for row in unused],
        "invalid": [_without(row, "total_count") for row in invalid],
    }


async def _tables(conn: Any, settings: Settings, limit: int) -> dict[str, Any]:
    return {"tables": await repo.tables(conn, limit=limit)}


_PARTS: dict[str, Callable[[Any, Settings, int], Awaitable[dict[str, Any]]]] = {
    "connections": _connections,
    "bloat": _bloat,
    "indexes": _indexes,
    "tables": _tables,
}


async def _snapshot(conn: Any, settings: Settings, target: str, taken_at: str, limit: int,
                    timeout_ms: int) -> dict[str, Any]:
    """Every view; one that fails (its query timed out or was refused) is null and named in
    ``unavailable`` with the reason, and the others are still returned. A lost connection
    fails the whole call (it is retried), and so does every view failing."""
    parts: dict[str, dict[str, Any] | None] = {}
    unavailable: dict[str, str] = {}
    first: asyncpg.exceptions.PostgresError | None = None
    for name, part in _PARTS.items():
        try:
            parts[name] = {"target": target, "taken_at": taken_at,
                           **await part(conn, settings, limit)}
        except CONNECTION_LOST:
            raise
        except asyncpg.exceptions.PostgresError as exc:
            first = first or exc
            parts[name] = None
            unavailable[name] = (
                f"its query ran longer than {timeout_ms} ms and was cancelled"
                if isinstance(exc, asyncpg.exceptions.QueryCanceledError)
                else f"its query failed (SQLSTATE {exc.sqlstate})")
            log.warning("monitoring_view_unavailable", target=target, view=name,
                        sqlstate=exc.sqlstate)
    if first is not None and len(unavailable) == len(_PARTS):
        raise first
    return {"target": target, "taken_at": taken_at, "summary": summarize(parts),
            "unavailable": unavailable, **parts}


def _without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in keys}


def _taken_at() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def get_view(pools: MonitoringPools, settings: Settings, target: str, view: str, *,
                   limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """One monitoring view of a target: connections, bloat, indexes, tables or snapshot."""
    if target not in settings.targets:
        raise NotFound(f"unknown target {target!r}")
    if view not in VIEWS:
        raise NotFound(f"unknown monitoring view {view!r}; views: {', '.join(VIEWS)}")
    taken_at = _taken_at()
    started = time.monotonic()

    async def work(conn: Any) -> dict[str, Any]:
        if view != "snapshot":
            return {"target": target, "taken_at": taken_at,
                    **await _PARTS[view](conn, settings, limit)}
        return await _snapshot(conn, settings, target, taken_at, limit,
                               pools.statement_timeout_ms)

    result = await pools.shared((target, view, limit), lambda: pools.run(target, work))
    log.debug("monitoring_view", target=target, view=view,
             duration_ms=round((time.monotonic() - started) * 1000, 1))
    return result


async def get_typed_view(pools: MonitoringPools, settings: Settings, target: str, view: str, *,
                         limit: int = DEFAULT_LIMIT) -> MonitoringView:
    """One monitoring view as its typed model (what the API answers)."""
    found = await get_view(pools, settings, target, view, limit=limit)
    model: MonitoringView = MODELS[view].model_validate(found)  # type: ignore[assignment]
    return model


# -- the summary ---------------------------------------------------------------------------------


def human_bytes(n: float) -> str:
    """1536 -> '1.5 kB', 50331648 -> '48 MB' (powers of 1024, like pg_size_pretty)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}" if abs(n) < 10 else f"{n:.0f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _worst_bloat(bloat: dict[str, Any]) -> str:
    candidates = [(row["bloat_bytes"], f"{row['schema']}.{row['table']}", row["bloat_ratio"])
                  for row in bloat["tables"]
                  if row["reliable"] and row["bloat_bytes"] and row["bloat_ratio"] is not None]
    candidates += [(row["bloat_bytes"], f"{row['schema']}.{row['index']} (index)",
                    row["bloat_ratio"])
                   for row in bloat["indexes"]
                   if row["reliable"] and row["bloat_bytes"] and row["bloat_ratio"] is not None]
    if not candidates:
        return "worst bloat: none estimated"
    size, name, ratio = max(candidates, key=lambda c: c[0])
    return f"worst bloat: {name} {ratio * 100:.0f}% ({human_bytes(size)})"


def summarize(parts: dict[str, dict[str, Any] | None]) -> str:
    """One line a chat bot can post as is; a view that could not be taken says so."""
    conns, idx, bloat = parts.get("connections"), parts.get("indexes"), parts.get("bloat")
    pieces = []
    if conns is None:
        pieces.append("connections unavailable")
    else:
        pieces += [
            f"{conns['total_connections']}/{conns['max_connections']} connections "
            f"({conns['used_percent']:.0f}%)",
            _plural(conns["long_running_count"], "long-running query", "long-running queries"),
        ]
    if idx is None:
        pieces.append("indexes unavailable")
    else:
        pieces += [
            _plural(idx["unused_count"], "unused index", "unused indexes")
            + f" ({human_bytes(idx['unused_bytes'])})",
            _plural(idx["invalid_count"], "invalid index", "invalid indexes"),
        ]
    pieces.append("bloat unavailable" if bloat is None else _worst_bloat(bloat))
    if parts.get("tables") is None:
        pieces.append("tables unavailable")
    return ", ".join(pieces)
