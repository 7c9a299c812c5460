"""Real schemas restore identically, in both modes: a Supabase-shaped database and one of
PostgreSQL-regression-style objects (testdata/real_schemas/, written for these tests: there is no
network here to fetch the real ones). Identical means: the same ``pg_dump --schema-only``, the
same contents of every table, sequence and large object, and the same database-level grants,
settings and comment.

Left out of the fixtures, because pg_dump (or this test server) cannot round-trip them:
subscriptions (their restore connects to a publisher; pg_dump writes them with connect = false
and a restore must then enable them by hand: the checklist lists them), security labels (they
need a label provider module loaded in the server), tablespaces (cluster-wide, and a directory
on the server's disk). The regression-style fixture's invalid index from a failed CREATE INDEX
CONCURRENTLY is not dumped by pg_dump at all: source and restore agree in their schema dumps,
and the restore has no such index."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import (
    PG_HOST,
    PG_PORT,
    PREFIX,
    ROOT,
    admin_conn,
    auth,
    backup,
    create_db,
    drop_db,
    dsn,
    psql,
    running_app,
    wait_job,
)
from tests.test_database_properties import properties
from tests.test_restore import restore

FIXTURES = ROOT / "testdata" / "real_schemas"
# psql variable -> role name; roles are cluster-wide, so unique to this session, and awkward.
ROLES = {
    "supabase_like": {"anon": f"{PREFIX}_anon", "authenticated": f"{PREFIX}_authenticated",
                      "service_role": f"{PREFIX}_service_role",
                      "authenticator": f"{PREFIX}_authenticator"},
    "regress_like": {"owner": f'{PREFIX} Régress "Owner"', "reader": f"{PREFIX}_reader"},
}
# What each in-place test breaks before restoring (the restore must undo all of it).
DAMAGE = {
    "supabase_like": """
        DELETE FROM public.messages WHERE id % 3 = 0; DROP TABLE storage.objects;
        UPDATE auth.users SET email = 'x' || email;
        ALTER PUBLICATION supabase_realtime DROP TABLE public.profiles;""",
    "regress_like": """
        DELETE FROM regress.measurement WHERE city_id = 2; TRUNCATE regress.capitals;
        ALTER TABLE regress.orders DROP CONSTRAINT orders_qty_positive;
        SELECT lo_unlink(4242001); DROP TABLE public.plain;
        ALTER DOMAIN regress.posint DROP CONSTRAINT posint_positive;
        DROP EVENT TRIGGER "regress ddl guard";""",
}


def schema_dump(db: str) -> str:
    """``pg_dump --schema-only``, less its ``\\restrict`` lines: they carry a random key that
    differs on every run (pg_dump 15.14 and later). Nothing else is normalised: the dump names
    no database (pg_dump writes the database only with --create)."""
    out = subprocess.run(["pg_dump", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres",
                          "--schema-only", "-d", db], check=True, capture_output=True,
                         text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict ", "\\unrestrict ")))


async def contents(db: str) -> dict[str, Any]:
    """Every table's (and materialized view's) rows, every sequence's position and every large
    object (owner, grants, comment, bytes), as counts and checksums."""
    conn = await admin_conn(db)
    try:
        rels = await conn.fetch(
            """SELECT format('%I.%I', n.nspname, c.relname) AS q FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'm')
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               ORDER BY 1""")
        out: dict[str, Any] = {}
        for rel in rels:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, coalesce(md5(string_agg(x::text, ',' ORDER BY "
                f"x::text)), '') AS h FROM ONLY {rel['q']} x")
            out[rel["q"]] = (row["n"], row["h"])
        out["sequences"] = [tuple(r) for r in await conn.fetch(
            "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2")]
        out["large objects"] = [tuple(r) for r in await conn.fetch(
            """SELECT m.oid, pg_get_userbyid(m.lomowner), m.lomacl::text,
                      obj_description(m.oid, 'pg_largeobject'), md5(lo_get(m.oid))
               FROM pg_largeobject_metadata m ORDER BY 1""")]
        return out
    finally:
        await conn.close()


async def state(db: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return schema_dump(db), await contents(db), await properties(db)


@pytest.fixture(params=["supabase_like", "regress_like"])
async def real_db(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    kind: str = request.param
    roles = ROLES[kind]
    conn = await admin_conn()
    try:
        for role in roles.values():
            await conn.execute("CREATE ROLE " + await conn.fetchval("SELECT quote_ident($1)",
                                                                    role))
    finally:
        await conn.close()
    db = await create_db(f"{PREFIX}_{kind}")
    try:
        args = [f"--set={var}={role}" for var, role in roles.items()]
        psql(db, *args, "-f", str(FIXTURES / f"{kind}.sql"))
        yield kind
    finally:
        conn = await admin_conn()
        try:
            for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                        f"{PREFIX}_{kind}%"):
                await drop_db(row["datname"])
            for role in roles.values():
                await conn.execute("DROP ROLE IF EXISTS "
                                   + await conn.fetchval("SELECT quote_ident($1)", role))
        finally:
            await conn.close()


async def test_real_schema_restores_identically_in_both_modes(make_settings: Any,
                                                               real_db: str) -> None:
    kind = real_db
    source = f"{PREFIX}_{kind}"
    target = kind.replace("_", "-")
    settings = make_settings(targets={target: {"dsn": dsn(source), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        backup_id = (await backup(c, target))["result"]["backup_id"]
        before = await state(source)

        # The restore test passes: what the source itself has (NOT VALID constraints, indexes
        # ON ONLY a partitioned parent) is no fault of the archive.
        resp = await c.post(f"/v1/targets/{target}/archives/{backup_id}/verify",
                            headers=auth("operator"), json={"level": "restore"})
        verified = await wait_job(c, resp.json()["id"], timeout=300)
        assert verified["status"] == "succeeded", verified["error"]

        new = f"{source}_new"
        done = await restore(c, target, {"backup_id": backup_id, "database": new})
        assert done["status"] == "succeeded", done["error"]
        checklist = done["result"]["checklist"]
        assert checklist["row_counts"]["ok"] and not checklist["errors"]
        assert all(i["in_source"] for i in checklist["invalid_indexes"])
        assert all(x["in_source"] for x in checklist["unvalidated_constraints"])
        assert checklist["database_properties"]["status"] == "applied", checklist
        after = await state(new)
        assert after[0] == before[0]  # schema
        assert after[1] == before[1]  # contents
        assert after[2] == before[2]  # the database's grants, settings, comment

        conn = await admin_conn(source)
        try:
            await conn.execute(DAMAGE[kind])
            await conn.execute(f'ALTER DATABASE "{source}" SET work_mem TO \'1MB\'; '
                               f'COMMENT ON DATABASE "{source}" IS \'damaged\'')
        finally:
            await conn.close()
        assert await state(source) != before
        done = await restore(c, target, {"backup_id": backup_id, "mode": "in_place",
                                         "confirm": target, "include_database_settings": True})
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["checklist"]["row_counts"]["ok"]
        after = await state(source)
        assert after[0] == before[0]
        assert after[1] == before[1]
        assert after[2] == before[2]
