"""A database's own grants, settings, roles' settings in it and comment come back with it (pg_dump
writes them only with --create, pg_dumpall --globals-only no longer does)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.restore.database_properties import apply, split_list
from tests.conftest import PREFIX, admin_conn, backup, create_db, drop_db, dsn, running_app
from tests.test_restore import restore

SECRET = "jwt-secret-6f1e0c"  # a setting value: never in the manifest nor in the job
ANON = f"{PREFIX}_anon"
ODD = f'{PREFIX} Odd "Rôle"\n-x'  # space, quotes, unicode, a newline, a dash
GONE = f"{PREFIX}_gone"  # exists at backup time, not at restore time
SOURCE = f"{PREFIX}_dbprops"


async def properties(db: str) -> dict[str, Any]:
    """The database's grants, settings and comment, read from the catalog."""
    conn = await admin_conn()
    try:
        row = await conn.fetchrow(
            """SELECT (SELECT array_agg(format('%s=%s%s', coalesce(pg_get_userbyid(
                           nullif(a.grantee, 0)), 'PUBLIC'), a.privilege_type,
                           CASE WHEN a.is_grantable THEN '*' ELSE '' END))
                       FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a) AS acl,
                      (SELECT array_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '-')
                                        || ': ' || c)
                       FROM pg_db_role_setting s, unnest(s.setconfig) c
                       WHERE s.setdatabase = d.oid) AS settings,
                      shobj_description(d.oid, 'pg_database') AS comment
               FROM pg_database d WHERE d.datname = $1""", db)
        return {"acl": sorted(row["acl"]), "settings": sorted(row["settings"] or []),
                "comment": row["comment"]}
    finally:
        await conn.close()


@pytest.fixture
async def source_db() -> AsyncIterator[str]:
    conn = await admin_conn()
    try:
        for role in (ANON, ODD, GONE):
            await conn.execute(f"CREATE ROLE {await conn.fetchval('SELECT quote_ident($1)', role)}")
    finally:
        await conn.close()
    db = await create_db(SOURCE)
    conn = await admin_conn(db)
    try:
        await conn.execute("SELECT set_config('pgv.anon', quote_ident($1), false), "
                           "set_config('pgv.odd', quote_ident($2), false), "
                           "set_config('pgv.gone', quote_ident($3), false)", ANON, ODD, GONE)
        for sql in (
                "GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {db} TO {anon}",
                "GRANT CONNECT ON DATABASE {db} TO {odd} WITH GRANT OPTION",
                "GRANT CONNECT ON DATABASE {db} TO {gone}",
                "REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC",
                f"ALTER DATABASE {{db}} SET \"app.settings.jwt_secret\" TO '{SECRET}'",
                "ALTER DATABASE {db} SET search_path TO \"$user\", public, \"My Schema\"",
                "ALTER DATABASE {db} SET statement_timeout TO '9s'",
                "ALTER ROLE {anon} IN DATABASE {db} SET statement_timeout TO '3s'",
                "ALTER ROLE {odd} IN DATABASE {db} SET search_path TO 'a, b', \"C\"",
                "ALTER ROLE {gone} IN DATABASE {db} SET work_mem TO '8MB'",
                "COMMENT ON DATABASE {db} IS 'the ''source'', with a comment'"):
            names = await conn.fetchrow("SELECT quote_ident(current_database()) AS db, "
                                        "current_setting('pgv.anon') AS anon, "
                                        "current_setting('pgv.odd') AS odd, "
                                        "current_setting('pgv.gone') AS gone")
            await conn.execute(sql.format(**dict(names)))
    finally:
        await conn.close()
    yield db
    conn = await admin_conn()
    try:
        for name in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1",
                                     SOURCE + "%"):
            await drop_db(name["datname"])
        for role in (ANON, ODD, GONE):
            await conn.execute("DROP ROLE IF EXISTS "
                               + await conn.fetchval("SELECT quote_ident($1)", role))
    finally:
        await conn.close()


async def _drop_gone_role() -> None:
    conn = await admin_conn()
    try:
        gone = await conn.fetchval("SELECT quote_ident($1)", GONE)
        await conn.execute(f'REVOKE ALL ON DATABASE "{SOURCE}" FROM {gone}; DROP ROLE {gone}')
    finally:
        await conn.close()


async def test_database_properties_come_back(make_settings: Any, source_db: str, s3: Any,
                                             bucket: str) -> None:
    settings = make_settings(targets={"dbprops": {"dsn": dsn(source_db),
                                                  "retention_min_backups": 1}})
    async with running_app(settings) as c:
        backup_id = (await backup(c, "dbprops"))["result"]["backup_id"]
        expected = await properties(source_db)
        await _drop_gone_role()
        # What the source had, less the role that no longer exists.
        expected["acl"] = [a for a in expected["acl"] if not a.startswith(GONE)]
        expected["settings"] = [s for s in expected["settings"] if not s.startswith(GONE)]

        # New database: always.
        new = f"{SOURCE}_new"
        done = await restore(c, "dbprops", {"backup_id": backup_id, "database": new})
        assert done["status"] == "succeeded", done["error"]
        assert await properties(new) == expected
        manifest = s3.get_object(Bucket=bucket, Key=f"archives/dbprops/{backup_id}/"
                                                    "manifest.json")["Body"].read().decode()
        assert SECRET not in manifest
        assert "app.settings.jwt_secret" in manifest  # its name only
        checklist = done["result"]["checklist"]["database_properties"]
        assert SECRET not in json.dumps(done)
        assert checklist["status"] == "partly applied"
        assert {s["what"] for s in checklist["skipped"]} == {
            f"GRANT CONNECT ON DATABASE TO {GONE}",
            f"ALTER ROLE {GONE} IN DATABASE SET work_mem"}
        assert {s["reason"] for s in checklist["skipped"]} == {
            "role does not exist on the destination"}
        assert f"ALTER ROLE {ODD} IN DATABASE SET search_path" in checklist["applied"]

        # In place: left alone unless asked, then made equal to the source.
        conn = await admin_conn(source_db)
        try:
            anon = await conn.fetchval("SELECT quote_ident($1)", ANON)
            await conn.execute(f"""
                REVOKE CREATE ON DATABASE "{SOURCE}" FROM {anon};
                GRANT TEMPORARY ON DATABASE "{SOURCE}" TO PUBLIC;
                ALTER DATABASE "{SOURCE}" SET work_mem TO '1MB';
                ALTER DATABASE "{SOURCE}" RESET statement_timeout;
                ALTER ROLE {anon} IN DATABASE "{SOURCE}" SET lock_timeout TO '1s';
                COMMENT ON DATABASE "{SOURCE}" IS 'changed'""")
        finally:
            await conn.close()
        changed = await properties(source_db)
        body = {"backup_id": backup_id, "mode": "in_place", "confirm": "dbprops"}
        done = await restore(c, "dbprops", body)
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["checklist"]["database_properties"]["status"] == "not requested"
        assert await properties(source_db) == changed
        done = await restore(c, "dbprops", {**body, "include_database_settings": True})
        assert done["status"] == "succeeded", done["error"]
        assert await properties(source_db) == expected


def test_list_settings_split_as_postgresql_stores_them() -> None:
    assert split_list('"$user", public, "My ""Schema"""') == ["$user", "public", 'My "Schema"']
    assert split_list("a,b") == ["a", "b"]
    assert split_list('""') == [""]
    assert split_list("") == []


async def test_a_read_only_database_restores_in_both_modes(make_settings: Any) -> None:
    # Its own settings come back last, and never bind pgvault's own sessions: the checklist
    # refreshes its materialized view, and an in-place restore can write.
    db = await create_db(f"{PREFIX}_readonly")
    conn = await admin_conn(db)
    try:
        await conn.execute(f"""
            CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g;
            CREATE MATERIALIZED VIEW m AS SELECT count(*) FROM t;
            ALTER DATABASE "{db}" SET default_transaction_read_only TO on""")
    finally:
        await conn.close()
    settings = make_settings(targets={"readonly": {"dsn": dsn(db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        backup_id = (await backup(c, "readonly"))["result"]["backup_id"]
        done = await restore(c, "readonly", {"backup_id": backup_id,
                                             "database": f"{PREFIX}_readonly_new"})
        assert done["status"] == "succeeded", done["error"]
        checklist = done["result"]["checklist"]
        assert checklist["errors"] == []
        assert [m["name"] for m in checklist["materialized_views_refreshed"]] == ["public.m"]
        assert (await properties(f"{PREFIX}_readonly_new"))["settings"] == [
            "-: default_transaction_read_only=on"]
        done = await restore(c, "readonly", {"backup_id": backup_id, "mode": "in_place",
                                             "confirm": "readonly"})
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["checklist"]["errors"] == []


async def test_recorded_properties_are_data_never_sql() -> None:
    db = await create_db(f"{PREFIX}_propsdata")
    props = {"owner": "postgres", "comment": "it's; DROP DATABASE x; --",
             "acl": [{"grantee": None, "privilege": "CONNECT", "grantable": False},
                     {"grantee": "postgres", "privilege": "ALL; DROP TABLE t", "grantable": False},
                     {"grantee": f"{PREFIX} nobody", "privilege": "CREATE", "grantable": True}],
             "settings": [{"role": None, "name": "app.x'; --", "value": "a"},
                          {"role": None, "name": "app.y", "value": "a'b; DROP"}]}
    conn = await admin_conn()
    try:
        done = await apply(conn, db, props, replace=False)
    finally:
        await conn.close()
    assert [s["reason"] for s in done["skipped"]] == [
        "not a database privilege", "role does not exist on the destination",
        "pgvault's own role keeps its access",  # never locked out of its target
        "InvalidNameError (SQLSTATE 42602)"]  # the server refused the name, as a name
    assert (await properties(db))["settings"] == ["-: app.y=a'b; DROP"]
    assert (await properties(db))["comment"] == "it's; DROP DATABASE x; --"
    assert (await properties(db))["acl"] == ["PUBLIC=CONNECT", "postgres=CONNECT"]
    await drop_db(db)
