"""Creating and dropping databases on a target's server. Names are validated by pattern before
they get here and quoted by the server (``quote_ident``), never by Python string formatting."""

from __future__ import annotations

from typing import Any


async def exists(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))


async def create(conn: Any, name: str, *, encoding: str | None = None,
                 collate: str | None = None, ctype: str | None = None) -> None:
    """An empty database from template0, with the source's encoding and locale when known
    (pg_restore needs template0: template1 may hold objects of its own)."""
    sql = await conn.fetchval(
        # quote_literal(NULL) is NULL, so an unknown setting drops out (format's %L would
        # write NULL).
        """SELECT format('CREATE DATABASE %I TEMPLATE template0', $1::text)
                  || coalesce(' ENCODING ' || quote_literal($2::text), '')
                  || coalesce(' LC_COLLATE ' || quote_literal($3::text), '')
                  || coalesce(' LC_CTYPE ' || quote_literal($4::text), '')""",
        name, encoding, collate, ctype)
    await conn.execute(sql)


async def drop(conn: Any, name: str) -> None:
    quoted = await conn.fetchval("SELECT quote_ident($1)", name)
    await conn.execute("DROP DATABASE IF EXISTS " + quoted + " WITH (FORCE)")


async def roles(conn: Any) -> list[tuple[str, str, bool]]:
    """Every role: its name, its name as the server quotes it, and whether it can log in."""
    return [(r[0], r[1], r[2]) for r in await conn.fetch(
        "SELECT rolname, quote_ident(rolname), rolcanlogin FROM pg_roles ORDER BY 1")]
