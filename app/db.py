"""The metadata database pool. Queries live in each domain's repository module."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from app.config import Settings


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: Settings) -> Any:
    """The metadata pool; raises the driver's error if the database cannot be reached."""
    return await asyncpg.create_pool(
        **settings.metadata_dsn.asyncpg_kwargs(),
        min_size=1,
        max_size=10,
        timeout=10,
        command_timeout=30,
        init=_init_connection,
        server_settings={"application_name": "pgvault"},
    )
