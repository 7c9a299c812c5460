"""Alembic environment: runs migrations through asyncpg against PGVAULT_DATABASE_URL."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)


class _Metadata(BaseSettings):
    """Only the metadata DSN, read as the service reads it: the environment, then ``.env``."""

    model_config = SettingsConfigDict(env_prefix="PGVAULT_", env_file=".env", extra="ignore")
    database_url: str | None = None


def database_url() -> str:
    url = config.attributes.get("database_url") or _Metadata().database_url
    if not url:
        raise SystemExit("PGVAULT_DATABASE_URL is not set (environment or .env): it names the "
                         "metadata database")
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(database_url())
    async with engine.connect() as connection:
        await connection.run_sync(do_run_migrations)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async_migrations())
