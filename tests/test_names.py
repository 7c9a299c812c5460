"""Awkward names end to end: a database whose own name, schemas, tables, columns, indexes, roles,
schema-less objects and a large object's owner hold spaces, quotes, dots, upper case, unicode, a
leading dash and newlines, with an excluded schema ``sales`` next to ``sales archive``. Backup,
verify, restore into a new database (with globals), restore in place and monitoring, all through
the API, against the real server and tools."""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import quote

from tests.conftest import PG_HOST, PREFIX, admin_conn, auth, backup, dsn, running_app, wait_job
from tests.test_restore import fingerprint, restore

DATABASE = f'{PREFIX} Names "Ü".db'
OWNER = f'{PREFIX} Owner "Q"'
NEWLINE = f"{PREFIX}\nALTER ROLE postgres WITH NOSUPERUSER;"  # can log in, owns a schema
DASH = f"-{PREFIX} dash.Ü"
LO_OWNER = f"{PREFIX} lo_create('4242424')"
GONE = f'{PREFIX} gone;\n"Ü"'  # can log in, owns nothing: dropped, then back from the globals
ROLES = [OWNER, NEWLINE, DASH, LO_OWNER, GONE]
SCHEMAS = ["public", "sales archive", 'Mixed.Case "Q"', "-dash", "ünï cödé", "new\nline",
           "x\n123; 0 0 SCHEMA - sales postgres"]
TABLE = 'Tab.le "1"'
KEPT_LO = 4242424  # made after the backup: not the archive's, so an in-place restore keeps it


async def q(conn: Any, *names: str) -> str:
    """A (qualified) name as the server quotes it."""
    quoted: str = await conn.fetchval(
        "SELECT string_agg(quote_ident(n), '.' ORDER BY o) "
        "FROM unnest($1::text[]) WITH ORDINALITY AS u(n, o)", list(names))
    return quoted


async def create_awkward_database() -> int:
    """The roles, the database and its contents; returns the archived large object's OID."""
    conn = await admin_conn()
    try:
        for role in ROLES:
            login = " LOGIN" if role in (NEWLINE, GONE) else ""
            await conn.execute(f"CREATE ROLE {await q(conn, role)}{login}")
        await conn.execute(f"CREATE DATABASE {await q(conn, DATABASE)}")
    finally:
        await conn.close()
    conn = await admin_conn(DATABASE)
    try:
        owner, dash = await q(conn, OWNER), await q(conn, DASH)
        col = await q(conn, "new\ncol")
        for i, schema in enumerate(SCHEMAS):
            s = await q(conn, schema)
            if schema != "public":
                boss = await q(conn, NEWLINE) if schema == "new\nline" else owner
                await conn.execute(f"CREATE SCHEMA {s} AUTHORIZATION {boss}")
            t = await q(conn, schema, TABLE)
            await conn.execute(f"""
                CREATE TABLE {t} ("Id" int PRIMARY KEY, {col} text, "-dash" text);
                INSERT INTO {t} SELECT g, 'row ' || g, {i} FROM generate_series(1, {10 * i + 5}) g;
                CREATE INDEX {await q(conn, f"-idx.{i}")} ON {t} ({col});
                ALTER TABLE {t} OWNER TO {owner};
                GRANT SELECT ON {t} TO {dash};""")
        uni = await q(conn, "ünï cödé")
        mv, tags = await q(conn, "ünï cödé", 'MV "x"'), await q(conn, "ünï cödé", "Tags")
        archived, heap = await q(conn, "sales archive", TABLE), await q(conn, "sales archive",
                                                                         'Heap "2"')
        fdw, srv, am = await q(conn, 'fdw "1"'), await q(conn, "srv\nx"), await q(conn, "heap 2")
        mood = await q(conn, "-dash", "Mood")
        await conn.execute(f"""
            CREATE SCHEMA sales;
            CREATE TABLE sales.orders (id int PRIMARY KEY);
            INSERT INTO sales.orders SELECT generate_series(1, 7);
            CREATE MATERIALIZED VIEW {mv} AS SELECT count(*) AS n FROM {archived};
            CREATE EXTENSION hstore SCHEMA {uni};
            CREATE TABLE {tags} (id int PRIMARY KEY, h {uni}.hstore);
            INSERT INTO {tags} VALUES (1, 'a=>"b c"');
            CREATE ACCESS METHOD {am} TYPE TABLE HANDLER heap_tableam_handler;
            CREATE TABLE {heap} (id int) USING {am};
            INSERT INTO {heap} SELECT generate_series(1, 3);
            CREATE TRANSFORM FOR integer LANGUAGE sql (FROM SQL WITH FUNCTION
                prsd_lextype(internal), TO SQL WITH FUNCTION int4recv(internal));
            CREATE FOREIGN DATA WRAPPER {fdw};
            CREATE SERVER {srv} FOREIGN DATA WRAPPER {fdw};
            CREATE USER MAPPING FOR {await q(conn, NEWLINE)} SERVER {srv};
            CREATE PUBLICATION {await q(conn, "Pub.1")} FOR TABLE {archived};
            CREATE TYPE {mood} AS ENUM ('ok', 'bad');
            CREATE CAST (text AS {mood}) WITH INOUT;
            CREATE TABLE public.docs (id int PRIMARY KEY, body oid);""")
        oid: int = await conn.fetchval("SELECT lo_from_bytea(0, 'archived')")
        await conn.execute(f"ALTER LARGE OBJECT {oid} OWNER TO {await q(conn, LO_OWNER)}; "
                           f"INSERT INTO public.docs VALUES (1, {oid})")
    finally:
        await conn.close()
    return oid


async def drop_everything(databases: list[str]) -> None:
    conn = await admin_conn()
    try:
        for name in databases:
            await conn.execute(await conn.fetchval(
                "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)", name))
        for role in ROLES:
            await conn.execute(await conn.fetchval(
                "SELECT format('DROP ROLE IF EXISTS %I', $1::text)", role))
    finally:
        await conn.close()


def schema_dump(db: str, *exclude: str) -> str:
    """``pg_dump --schema-only`` (less ``exclude``d schemas), without its random \\restrict key."""
    out = subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "--schema-only",
                          *[f'--exclude-schema="{s}"' for s in exclude], "--", db],
                         check=True, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict ", "\\unrestrict ")))


async def large_objects(db: str) -> dict[int, bytes]:
    conn = await admin_conn(db)
    try:
        return {r["oid"]: r["data"] for r in await conn.fetch(
            "SELECT oid::int8 AS oid, lo_get(oid) AS data FROM pg_largeobject_metadata")}
    finally:
        await conn.close()


async def test_awkward_names_through_backup_verify_restores_and_monitoring(
        make_settings: Any) -> None:
    copy = f"{PREFIX}_names_copy"
    try:
        archived_lo = await create_awkward_database()
        settings = make_settings(targets={"names": {
            "dsn": dsn(quote(DATABASE, safe="")), "exclude_schemas": ["sales"],
            "retention_min_backups": 1}})
        source_rows = await fingerprint(DATABASE)
        source_schema = schema_dump(DATABASE)
        async with running_app(settings) as c:
            # Backup: the manifest lists what the dump holds, names exactly as the catalog has them.
            bid = (await backup(c, "names"))["result"]["backup_id"]
            doc = (await c.get(f"/v1/targets/names/archives/{bid}",
                               headers=auth("viewer"))).json()["manifest"]
            assert doc["database"] == DATABASE
            assert sorted(s["name"] for s in doc["schemas"]) == sorted(SCHEMAS)
            assert {s["name"]: s["owner"] for s in doc["schemas"]}["new\nline"] == NEWLINE
            counted = {(t["schema"], t["name"]): t["rows"] for t in doc["tables"]}
            for i, schema in enumerate(SCHEMAS):
                assert counted[(schema, TABLE)] == 10 * i + 5
            assert not any(schema == "sales" for schema, _ in counted)
            assert {(o["type"], tuple(o["names"])) for o in doc["schemaless_objects"]} >= {
                ("access method", ("heap 2",)), ("publication", ("Pub.1",)),
                ("server", ("srv\nx",)), ("foreign-data wrapper", ('fdw "1"',)),
                ("user mapping", (NEWLINE, "srv\nx")),
                ("cast", ("pg_catalog", "text", "-dash", "Mood")),
                ("transform", ("pg_catalog", "int4", "sql"))}

            # Verify: restored into a scratch database, every table counted.
            resp = await c.post(f"/v1/targets/names/archives/{bid}/verify",
                                headers=auth("operator"), json={"level": "restore"})
            verified = await wait_job(c, resp.json()["id"], timeout=180)
            assert verified["status"] == "succeeded", verified["error"]
            assert verified["result"]["row_counts"]["tables_checked"] == len(counted)

            # New database, with the globals: a role dropped since comes back, by its exact name.
            conn = await admin_conn()
            try:
                await conn.execute(f"DROP ROLE {await q(conn, GONE)}")
            finally:
                await conn.close()
            done = await restore(c, "names", {"backup_id": bid, "database": copy,
                                              "include_globals": True})
            assert done["status"] == "succeeded", done["error"]
            assert done["result"]["rows_match"] is True
            roles = done["result"]["checklist"]["globals"]
            assert GONE in roles["created"] and GONE in roles["login_roles"]
            assert {OWNER, NEWLINE, DASH, LO_OWNER, "postgres"} <= set(roles["skipped_existing"])
            assert GONE in done["result"]["checklist"]["roles_to_reset_password"]
            assert await fingerprint(copy) == {k: v for k, v in source_rows.items()
                                               if not k.startswith("sales.")}
            assert schema_dump(copy) == schema_dump(DATABASE, "sales")
            assert await large_objects(copy) == {archived_lo: b"archived"}

            # Monitoring names tables and indexes exactly.
            tables = (await c.get("/v1/targets/names/monitoring/tables",
                                  headers=auth("viewer"))).json()["tables"]
            assert {(s, TABLE) for s in SCHEMAS} <= {(t["schema"], t["table"]) for t in tables}
            unused = (await c.get("/v1/targets/names/monitoring/indexes",
                                  headers=auth("viewer"))).json()["unused"]
            assert {(s, f"-idx.{i}") for i, s in enumerate(SCHEMAS)} <= {
                (x["schema"], x["index"]) for x in unused}

            # In place: every archived schema back as it was, sales (excluded) untouched, the
            # schema-less objects replaced, a large object the archive does not hold kept.
            conn = await admin_conn(DATABASE)
            try:
                col = await q(conn, "new\ncol")
                for schema in SCHEMAS:
                    await conn.execute(f"UPDATE {await q(conn, schema, TABLE)} "
                                       f"""SET {col} = 'changed' WHERE "Id" % 2 = 0""")
                await conn.execute(f"""
                    DROP TABLE {await q(conn, "-dash", TABLE)};
                    INSERT INTO sales.orders VALUES (8), (9);
                    SELECT lo_put({archived_lo}, 0, 'XXXXX');
                    SELECT lo_from_bytea({KEPT_LO}, 'kept');
                    COMMENT ON SCHEMA public IS 'changed';""")
            finally:
                await conn.close()
            changed_sales = (await fingerprint(DATABASE))["sales.orders"]
            done = await restore(c, "names", {"backup_id": bid, "mode": "in_place",
                                              "confirm": "names"})
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["rows_match"] is True
        after = await fingerprint(DATABASE)
        assert after.pop("sales.orders") == changed_sales and changed_sales[0] == 9
        assert after == {k: v for k, v in source_rows.items() if k != "sales.orders"}
        assert schema_dump(DATABASE) == source_schema
        assert await large_objects(DATABASE) == {archived_lo: b"archived", KEPT_LO: b"kept"}
    finally:
        await drop_everything([DATABASE, copy])


async def test_an_excluded_schema_is_matched_exactly(make_settings: Any) -> None:
    """exclude_schemas ["Sales", "x.y*"] leaves out "Sales" and "x.y*", not sales (pg_dump folds
    an unquoted pattern to lower case) nor "x.yz" (nor does it fail on a dot), as the manifest's
    facts do."""
    db = f"{PREFIX}_exact"
    conn = await admin_conn()
    try:
        await conn.execute(f"CREATE DATABASE {db}")
    finally:
        await conn.close()
    conn = await admin_conn(db)
    try:
        await conn.execute('CREATE SCHEMA sales; CREATE TABLE sales.orders (id int); '
                           'INSERT INTO sales.orders VALUES (1), (2); '
                           'CREATE SCHEMA "Sales"; CREATE TABLE "Sales".big (id int); '
                           'CREATE SCHEMA "x.y*"; CREATE TABLE "x.y*".t (id int); '
                           'CREATE SCHEMA "x.yz"; CREATE TABLE "x.yz".t (id int)')
    finally:
        await conn.close()
    settings = make_settings(targets={"exact": {
        "dsn": dsn(db), "exclude_schemas": ["Sales", "x.y*"], "retention_min_backups": 1}})
    async with running_app(settings) as c:
        bid = (await backup(c, "exact"))["result"]["backup_id"]
        done = await restore(c, "exact", {"backup_id": bid, "database": f"{PREFIX}_exact_copy"})
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["rows_match"] is True
    assert set(await fingerprint(f"{PREFIX}_exact_copy")) == {"sales.orders", '"x.yz".t'}
