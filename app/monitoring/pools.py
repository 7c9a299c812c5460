"""Small read-only connection pools per target for the monitoring views, each with a statement
timeout (see app/monitoring/service.py for how their errors are answered).

Driver errors are translated here, once, by class or SQLSTATE (never by message text): a target
that refuses or does not answer -> :class:`~app.errors.Unavailable` (503), then not tried again
for one connect timeout; a query cancelled by its timeout -> :class:`~app.errors.TimedOut` (504);
a connection lost mid-call -> the pool's connections are expired and the call is tried once more.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import structlog

from app.config import Settings
from app.errors import NotFound, TimedOut, Unavailable

log = structlog.get_logger("pgvault.monitoring")

T = TypeVar("T")

APPLICATION_NAME = "pgvault-monitoring"

# Errors meaning "this connection is gone", as opposed to "this query failed".
CONNECTION_LOST: tuple[type[BaseException], ...] = (
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
            except CONNECTION_LOST as exc:
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
