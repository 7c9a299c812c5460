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

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import structlog

from app.config import Settings
from app.errors import NotFound, TimedOut, Unavailable
from app.monitoring import repository as repo
from app.monitoring.schemas import MODELS, MonitoringView

log = structlog.get_logger("pgvault.monitoring")

T = TypeVar("T")

VIEWS = ("connections", "bloat", "indexes", "tables", "snapshot")
DEFAULT_LIMIT = 50
APPLICATION_NAME = "pgvault-monitoring"

# Errors meaning "this connection is gone", as opposed to "this query failed".
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    asyncpg.exceptions.AdminShutdownError,  # 57P01: backend terminated, server shutting down
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03
    # A backend terminated while the connection sat idle can leave the protocol confused
    # ("another operation is in progress") before the socket is seen closed.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


class _ConnectFailed(Exception):
    """Raised by the pool's connect hook; ``reason`` is safe to show (no host, no password)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _connect_reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name does not resolve"
    if isinstance(exc, OSError):
        code = errno.errorcode.get(exc.errno or 0)
        return f"network error ({code})" if code else "network error"
    if isinstance(exc, asyncpg.exceptions.InvalidAuthorizationSpecificationError):
        return "authentication failed"  # 28000 and 28P01
    if isinstance(exc, asyncpg.exceptions.InvalidCatalogNameError):
        return "database does not exist"
    if isinstance(exc, asyncpg.exceptions.TooManyConnectionsError):
        return "too many connections"
    if isinstance(exc, asyncpg.exceptions.CannotConnectNowError):
        return "server is starting up or shutting down"
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return f"connection rejected (SQLSTATE {exc.sqlstate})"
    return f"cannot connect ({type(exc).__name__})"


class MonitoringPools:
    """One small asyncpg pool per target (0 to 2 connections), created on first use and kept."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pools: dict[str, Any] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # target -> (monotonic time, reason)
        self._lock = asyncio.Lock()
        # Identical calls in flight share one query; its answer serves for cache_s seconds.
        self._inflight: dict[tuple[str, str, int], asyncio.Future[Any]] = {}
        self._cache: dict[tuple[str, str, int], tuple[float, Any]] = {}
        self.cache_s = settings.monitoring_cache_s
        self.statement_timeout_ms = settings.monitoring_statement_timeout_ms
        self.connect_timeout_s = settings.monitoring_connect_timeout_s
        # Slightly above the server's limit: the server cancels first and says so (57014); the
        # client gives up by itself only when the server cannot answer at all.
        self.command_timeout_s = self.statement_timeout_ms / 1000 + 1.0

    def _connect_hook(self, target: str) -> Callable[..., Awaitable[Any]]:
        """The pool's ``connect``: failures become :class:`_ConnectFailed`, and for one
        connect timeout after a failure the target is not tried again, so callers queued
        behind a dead target fail at once instead of each waiting out the timeout."""

        async def connect(*args: Any, **kwargs: Any) -> Any:
            failed = self._failed.get(target)
            if failed is not None and time.monotonic() - failed[0] < self.connect_timeout_s:
                raise _ConnectFailed(failed[1])
            try:
                conn = await asyncpg.connect(*args, **kwargs)
            except (OSError, asyncpg.exceptions.PostgresError,
                    asyncpg.exceptions.InterfaceError,
                    asyncpg.exceptions.InternalClientError) as exc:
                reason = _connect_reason(exc, self.connect_timeout_s)
                self._failed[target] = (time.monotonic(), reason)
                raise _ConnectFailed(reason) from exc
            self._failed.pop(target, None)
            return conn

        return connect

    async def pool(self, target: str) -> Any:
        """The target's pool; :class:`NotFound` for a target not in the configuration."""
        pool = self._pools.get(target)
        if pool is not None:
            return pool
        config = self._settings.targets.get(target)
        if config is None:
            raise NotFound(f"unknown target {target!r}")
        async with self._lock:
            pool = self._pools.get(target)
            if pool is None:
                # min_size=0: no connection is made here, so creating the pool never blocks
                # on an unreachable target.
                pool = await asyncpg.create_pool(
                    **config.parsed_dsn.asyncpg_kwargs(),
                    min_size=0,
                    max_size=2,
                    max_inactive_connection_lifetime=60,
                    connect=self._connect_hook(target),
                    timeout=self.connect_timeout_s,
                    command_timeout=self.command_timeout_s,
                    server_settings={
                        "statement_timeout": str(self.statement_timeout_ms),
                        "application_name": APPLICATION_NAME,
                        "default_transaction_read_only": "on",
                    },
                )
                self._pools[target] = pool
        return pool

    async def run(self, target: str, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(conn)`` on one of the target's connections, translating driver errors."""
        pool = await self.pool(target)
        # Waiting for a free connection is bounded too: two calls ahead of us each finish
        # within the command timeout.
        acquire_timeout = self.connect_timeout_s + 2 * self.command_timeout_s
        for attempt in (1, 2):
            acquired = False
            try:
                async with pool.acquire(timeout=acquire_timeout) as conn:
                    acquired = True
                    return await work(conn)
            except _ConnectFailed as exc:
                log.warning("monitoring_target_unreachable", target=target, reason=exc.reason)
                raise Unavailable(f"target {target} is unreachable: {exc.reason}") from None
            except asyncpg.exceptions.QueryCanceledError:
                log.warning("monitoring_query_timeout", target=target,
                            statement_timeout_ms=self.statement_timeout_ms)
                raise TimedOut(f"a monitoring query on target {target} ran longer than "
                               f"{self.statement_timeout_ms} ms and was cancelled") from None
            except TimeoutError:
                if not acquired:
                    raise TimedOut(f"no monitoring connection to target {target} came free "
                                   f"within {acquire_timeout:g} s") from None
                log.warning("monitoring_query_timeout", target=target,
                            command_timeout_s=self.command_timeout_s)
                raise TimedOut(f"target {target} did not answer a monitoring query within "
                               f"{self.command_timeout_s:g} s") from None
            except _CONNECTION_LOST as exc:
                # Idle connections may all be dead (target restarted): replace them all.
                await pool.expire_connections()
                log.info("monitoring_connection_lost", target=target, attempt=attempt,
                         error=type(exc).__name__)
                if attempt == 2:
                    raise Unavailable(f"target {target} is unreachable: connection lost "
                                      f"({type(exc).__name__})") from None
            except asyncpg.exceptions.PostgresError as exc:
                log.warning("monitoring_query_failed", target=target, sqlstate=exc.sqlstate)
                raise Unavailable(f"target {target} could not answer a monitoring query "
                                  f"(SQLSTATE {exc.sqlstate})") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def shared(self, key: tuple[str, str, int],
                     produce: Callable[[], Awaitable[T]]) -> T:
        """``produce()``, run once for all concurrent callers of ``key`` and remembered for
        ``cache_s`` seconds: fifty bots asking at once cost the target one query, not fifty."""
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.cache_s:
            result: T = hit[1]
            return result
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(produce())
            self._inflight[key] = future

            def settle(done: asyncio.Future[Any]) -> None:
                self._inflight.pop(key, None)
                if not done.cancelled() and done.exception() is None:
                    self._cache[key] = (time.monotonic(), done.result())

            future.add_done_callback(settle)
        # One caller giving up must not cancel the query the others wait for.
        shared_result: T = await asyncio.shield(future)
        return shared_result

    async def close(self) -> None:
        """Close every pool; connections still busy after a few seconds are terminated."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            try:
                await asyncio.wait_for(pool.close(), timeout=self.command_timeout_s + 2)
            except (TimeoutError, OSError, asyncpg.exceptions.PostgresError,
                    asyncpg.exceptions.InterfaceError):
                pool.terminate()


# -- the views -----------------------------------------------------------------------------------


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
        except _CONNECTION_LOST:
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
