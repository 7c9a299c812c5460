"""The metadata pool. Queries live in each domain's repository module.

A metadata database that cannot be used is a start-up problem: :func:`create_pool` and
:func:`check_metadata` raise :class:`ConfigError` with one line that says why (unreachable, no
such database, authentication refused, schema never created), matched on the driver's exception
classes, never on message text.
"""

from __future__ import annotations

import json
import os
from typing import Any

import asyncpg

from app.config import ConfigError, PgDsn, Settings

UPGRADE = "run `alembic upgrade head` (reads PGVAULT_DATABASE_URL)"


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: Settings) -> Any:
    """The metadata pool; :class:`ConfigError` if the database cannot be reached or has no
    schema."""
    dsn = settings.metadata_dsn
    try:
        pool = await asyncpg.create_pool(
            **dsn.asyncpg_kwargs(),
            min_size=1,
            max_size=10,
            timeout=10,
            command_timeout=30,
            init=_init_connection,
            server_settings={"application_name": "pgvault"},
        )
    except Exception as exc:
        raise ConfigError(connect_problem(dsn, exc)) from None
    try:
        async with pool.acquire() as conn:
            await _check_schema(conn, dsn)
    except BaseException:
        pool.terminate()
        raise
    return pool


async def check_metadata(settings: Settings) -> None:
    """The metadata database answers and has pgvault's schema; :class:`ConfigError` otherwise."""
    dsn = settings.metadata_dsn
    try:
        conn = await asyncpg.connect(**dsn.asyncpg_kwargs(), timeout=10)
    except Exception as exc:
        raise ConfigError(connect_problem(dsn, exc)) from None
    try:
        await _check_schema(conn, dsn)
    finally:
        await conn.close()


async def _check_schema(conn: Any, dsn: PgDsn) -> None:
    if await conn.fetchval("SELECT to_regclass('alembic_version') IS NULL"):
        raise ConfigError(f"PGVAULT_DATABASE_URL: database {dsn.database!r} on "
                          f"{dsn.host}:{dsn.port} has no pgvault schema: {UPGRADE}")


def connect_problem(dsn: PgDsn, exc: BaseException, then: str = UPGRADE) -> str:
    """Why connecting to the metadata database failed, in one line without secrets.

    ``exc`` may be the driver's error or one that wraps it (SQLAlchemy, under Alembic): the chain
    of causes is searched for a class that names the problem. ``then`` is the step after creating
    a missing database."""
    where = f"{dsn.host}:{dsn.port}"
    head = f"PGVAULT_DATABASE_URL: cannot use {dsn.redacted()}"
    for cause in _causes(exc):
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return (f"PGVAULT_DATABASE_URL: database {dsn.database!r} does not exist on {where}: "
                    f"create it (createdb {dsn.database}), then {then}")
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            # The server's own words ('password authentication failed for user "x"'); libpq
            # and the server never echo a password.
            return f"{head}: {cause}"
        if isinstance(cause, asyncpg.PostgresError):
            return f"{head}: {type(cause).__name__}: {cause}"
        if isinstance(cause, TimeoutError):
            return f"{head}: no answer from {where} within 10 s"
        if isinstance(cause, OSError):
            reason = os.strerror(cause.errno) if cause.errno else str(cause) or "OSError"
            return f"{head}: cannot connect to {where}: {reason}"
    return f"{head}: {type(exc).__name__}"


def server_error(exc: BaseException) -> asyncpg.PostgresError | None:
    """The error the server reported, in ``exc`` or among its causes (SQLAlchemy wraps it)."""
    return next((c for c in _causes(exc) if isinstance(c, asyncpg.PostgresError)), None)


def _causes(exc: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or item in found:
            continue
        found.append(item)
        # SQLAlchemy keeps the driver's exception as ``orig``; asyncpg's multi-host errors keep
        # theirs in ``exceptions`` (an ExceptionGroup-like OSError).
        todo += [getattr(item, "orig", None), item.__cause__, item.__context__]
        todo += [e for e in getattr(item, "exceptions", []) if isinstance(e, BaseException)]
    return found
