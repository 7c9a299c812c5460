"""Alembic environment: runs migrations through asyncpg against PGVAULT_DATABASE_URL."""

from __future__ import annotations

import asyncio
import sys
from logging.config import fileConfig
from typing import NoReturn

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.config import PgDsn
from app.db import connect_problem, server_error

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


class _Metadata(BaseSettings):
    """Only the metadata DSN, read as the service reads it: the environment, then ``.env``."""

    model_config = SettingsConfigDict(env_prefix="PGVAULT_", env_file=".env", extra="ignore")
    database_url: str | None = None


def fail(message: str) -> NoReturn:
    """A problem of the environment, not of a migration: one line and exit code 2, as the
    service reports its start-up problems (a traceback would bury the cause)."""
    print(f"pgvault: alembic: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def database_url() -> tuple[str, PgDsn | None]:
    url = config.attributes.get("database_url")
    if url:
        return url, None
    url = _Metadata().database_url
    if not url:
        fail("PGVAULT_DATABASE_URL is not set (environment or .env): it names the metadata "
             "database")
    try:
        dsn = PgDsn.parse(url)  # the service's own parser: the same rules, the same messages
    except ValueError as exc:
        fail(f"PGVAULT_DATABASE_URL {exc}")
    return url, dsn


def engine_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url, dsn = database_url()
    engine = create_async_engine(engine_url(url))
    try:
        try:
            connection = await engine.connect()
        except Exception as exc:
            if dsn is None:
                raise
            fail(connect_problem(dsn, exc, then="run this command again"))
        try:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
        except Exception as exc:
            # The server refused a statement (no CREATE privilege on the schema, a lock timeout):
            # its own words say why. Anything else is a bug in a migration: its traceback stays.
            refused = server_error(exc)
            if dsn is None or refused is None:
                raise
            fail(f"migration refused by {dsn.redacted()}: {type(refused).__name__}: {refused}")
        finally:
            await connection.close()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=engine_url(database_url()[0]), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async_migrations())
