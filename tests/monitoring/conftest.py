"""A throwaway database on the local PostgreSQL 15 server, seeded with what the monitoring views
should find, and settings whose targets point at it ("mon"), at a closed port ("down") and at a
socket that accepts connections but never answers ("silent")."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from app.config import Settings
from app.monitoring.pools import MonitoringPools

PG_HOST, PG_PORT = "127.0.0.1", 5432
ROWS = 20_000

SEED_SQL = f"""
-- one implicit transaction: no old row version is pruned before the ANALYZE that follows
-- two identical tables; every row of "churned" is then rewritten three times with autovacuum off
CREATE TABLE churned (id int PRIMARY KEY, n int NOT NULL, payload text NOT NULL)
    WITH (autovacuum_enabled = false);
CREATE TABLE fresh (id int PRIMARY KEY, n int NOT NULL, payload text NOT NULL)
    WITH (autovacuum_enabled = false);
INSERT INTO churned SELECT g, g, md5(g::text) FROM generate_series(1, {ROWS}) g;
INSERT INTO fresh SELECT g, g, md5(g::text) FROM generate_series(1, {ROWS}) g;
UPDATE churned SET n = n + 1;
UPDATE churned SET n = n + 1;
UPDATE churned SET n = n + 1;

-- indexes: one never scanned, and others that enforce something (never scanned either)
CREATE TABLE accounts (id int PRIMARY KEY, email text UNIQUE, region int, during tstzrange,
                       EXCLUDE USING gist (during WITH &&));
CREATE INDEX accounts_region_idx ON accounts (region);
CREATE UNIQUE INDEX accounts_lower_email_uidx ON accounts (lower(email));
INSERT INTO accounts
SELECT g, 'u' || g || '@example.org', g % 10,
       tstzrange(now() + make_interval(days => g), now() + make_interval(days => g + 1))
FROM generate_series(1, 1000) g;

-- duplicates, for a CREATE UNIQUE INDEX CONCURRENTLY that fails and leaves an invalid index
CREATE TABLE dupes (v int);
INSERT INTO dupes VALUES (1), (1), (2);

-- a table the timeout test locks
CREATE TABLE lockme (id int);
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((PG_HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def admin(db: str = "postgres") -> Any:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=db)


@pytest.fixture(scope="session")
async def mon_db() -> AsyncIterator[str]:
    name = f"pgvault_mon_{secrets.token_hex(4)}"
    conn = await admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        db = await admin(name)
        try:
            await db.execute(SEED_SQL)
            # Publish this session's row counts now, so they cannot land after (and on top of)
            # what ANALYZE records below.
            await db.execute("SELECT pg_stat_force_next_flush()")
            with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                await db.execute("CREATE UNIQUE INDEX CONCURRENTLY dupes_v_uidx ON dupes (v)")
            await db.execute("ANALYZE")
        finally:
            await db.close()
        yield name
    finally:
        conn = await admin()
        try:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
def silent_port() -> Iterator[int]:
    """A listening socket nobody accepts from: the TCP handshake succeeds, no reply ever comes."""
    with socket.socket() as s:
        s.bind((PG_HOST, 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture(scope="session")
def mon_settings(mon_db: str, silent_port: int) -> Callable[..., Settings]:
    """Settings built from explicit values only (no environment, no .env file)."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres",
            "storage_url": "file:///tmp/x",
            "gpg_home": "/tmp/x",
            "gpg_recipients": ["A" * 40],
            "targets": {
                "mon": {"dsn": f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{mon_db}"},
                "down": {"dsn": f"postgresql://postgres:s3cret-pw@{PG_HOST}:{free_port()}/postgres"},
                "silent": {"dsn": f"postgresql://postgres@{PG_HOST}:{silent_port}/postgres"},
            },
            "monitoring_statement_timeout_ms": 3000,
            "monitoring_connect_timeout_s": 1.5,
            "monitoring_query_max_chars": 40,
            "long_query_seconds": 1,
            "monitoring_cache_s": 0,  # these tests look at fresh answers every time
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@pytest.fixture(scope="session")
def settings(mon_settings: Callable[..., Settings]) -> Settings:
    return mon_settings()


@pytest.fixture(scope="session")
async def pools(settings: Settings) -> AsyncIterator[MonitoringPools]:
    pools = MonitoringPools(settings)
    yield pools
    await pools.close()


@pytest.fixture
async def db(mon_db: str) -> AsyncIterator[Any]:
    """A read-write superuser connection to the monitored database, for setting scenes."""
    conn = await admin(mon_db)
    yield conn
    await conn.close()
