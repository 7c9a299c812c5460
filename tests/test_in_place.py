"""In-place restores: all or nothing, on ordinary databases too."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.errors import StepFailed
from app.integrations import pg_clients, pg_tools
from app.integrations.process import run
from app.restore import in_place
from tests.conftest import (
    PG_HOST,
    PREFIX,
    admin_conn,
    auth,
    backup,
    create_db,
    dsn,
    psql,
    running_app,
    wait_job,
)
from tests.test_restore import change_then_restore_in_place, fingerprint, restore


async def plain_target(make_settings: Any, name: str, rows: int) -> tuple[str, Any]:
    """A database as CREATE DATABASE makes it: public owned by pg_database_owner."""
    db = await create_db(f"{PREFIX}_{name}")
    conn = await admin_conn(db)
    try:
        await conn.execute(f"""
            CREATE TABLE public.t (id int PRIMARY KEY, note text);
            INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series(1, {rows}) g;
            CREATE SCHEMA sales;
            CREATE TABLE sales.orders (id int PRIMARY KEY, t_id int REFERENCES public.t(id));
            INSERT INTO sales.orders SELECT g, g FROM generate_series(1, 100) g;
            CREATE VIEW public.v AS SELECT count(*) FROM sales.orders;""")
    finally:
        await conn.close()
    return db, make_settings(targets={name: {"dsn": dsn(db), "retention_min_backups": 1}})


async def test_in_place_on_a_plain_database(make_settings: Any) -> None:
    db, settings = await plain_target(make_settings, "plainip", 1000)
    async with running_app(settings) as c:
        job = await backup(c, "plainip")
        before, done = await change_then_restore_in_place(
            c, "plainip", db, job["result"]["backup_id"],
            "DELETE FROM sales.orders; UPDATE public.t SET note = 'x'")
    assert done["status"] == "succeeded", done["error"]
    assert await fingerprint(db) == before
    conn = await admin_conn(db)
    try:  # public is back as CREATE DATABASE makes it
        owner = await conn.fetchval("SELECT nspowner::regrole::text FROM pg_namespace "
                                    "WHERE nspname = 'public'")
        usable = await conn.fetchval("SELECT has_schema_privilege('public', 'public', 'USAGE')")
    finally:
        await conn.close()
    assert owner == "pg_database_owner" and usable is True


async def test_in_place_refuses_when_outside_objects_depend(make_settings: Any) -> None:
    db, settings = await plain_target(make_settings, "depip", 100)
    settings.targets["depip"].exclude_schemas.append("audit")
    async with running_app(settings) as c:
        conn = await admin_conn(db)
        try:
            # Not in the archive (excluded), yet DROP SCHEMA public CASCADE would take a view,
            # a column, a default and a trigger of it: each must stop the restore.
            await conn.execute("""
                CREATE TYPE public.mood AS ENUM ('ok', 'bad');
                CREATE SEQUENCE public.ids;
                CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql
                    AS 'BEGIN RETURN NEW; END';
                CREATE SCHEMA audit;
                CREATE VIEW audit.counts AS SELECT count(*) FROM public.t;
                CREATE TABLE audit.log (id bigint DEFAULT nextval('public.ids'), m public.mood);
                CREATE TRIGGER touch BEFORE INSERT ON audit.log
                    FOR EACH ROW EXECUTE FUNCTION public.touch();
                INSERT INTO audit.log (m) VALUES ('ok'), ('bad');""")
        finally:
            await conn.close()
        job = await backup(c, "depip")
        before = await fingerprint(db)
        done = await restore(c, "depip", {"backup_id": job["result"]["backup_id"],
                                          "mode": "in_place", "confirm": "depip"})
    assert done["status"] == "failed"
    detail = done["error"]["detail"]
    for named in ("audit.counts", "table column audit.log.m", "default value for audit.log.id",
                  "trigger touch on audit.log"):
        assert named in detail, (named, detail)
    assert await fingerprint(db) == before
    assert "audit.log" in before


async def test_in_place_brings_back_large_objects(make_settings: Any) -> None:
    db, settings = await plain_target(make_settings, "loip", 100)
    conn = await admin_conn(db)
    try:
        await conn.execute("CREATE TABLE public.docs (id int PRIMARY KEY, body oid); "
                           "INSERT INTO public.docs VALUES (1, lo_from_bytea(0, 'first')), "
                           "(2, lo_from_bytea(0, 'second'))")
    finally:
        await conn.close()

    async def contents() -> list[Any]:
        conn = await admin_conn(db)
        try:
            return [tuple(r) for r in await conn.fetch(
                "SELECT id, lo_get(body) FROM public.docs ORDER BY id")]
        finally:
            await conn.close()

    async with running_app(settings) as c:
        job = await backup(c, "loip")
        before = await contents()
        conn = await admin_conn(db)
        try:
            await conn.execute("SELECT lo_put(body, 0, 'XXXXX') FROM public.docs WHERE id = 1; "
                               "SELECT lo_unlink(body) FROM public.docs WHERE id = 2; "
                               "DELETE FROM public.docs WHERE id = 2")
        finally:
            await conn.close()
        done = await restore(c, "loip", {"backup_id": job["result"]["backup_id"],
                                         "mode": "in_place", "confirm": "loip"})
    assert done["status"] == "succeeded", done["error"]
    assert await contents() == before == [(1, b"first"), (2, b"second")]


async def test_in_place_rolls_back_when_pg_restore_dies(make_settings: Any) -> None:
    db, settings = await plain_target(make_settings, "killip", 1_500_000)
    async with running_app(settings) as c:
        job = await backup(c, "killip")
        conn = await admin_conn(db)
        try:
            await conn.execute("DELETE FROM public.t WHERE id > 1000000")
        finally:
            await conn.close()
        changed = await fingerprint(db)
        resp = await c.post("/v1/targets/killip/restores", headers=auth("admin"),
                            json={"backup_id": job["result"]["backup_id"], "mode": "in_place",
                                  "confirm": "killip"})
        job_id = resp.json()["id"]
        killed = False
        for _ in range(600):
            for proc in psutil.process_iter(["name", "cmdline"]):
                cmd = proc.info["cmdline"] or []
                if proc.info["name"] == "pg_restore" and "--file=-" in cmd:
                    proc.kill()
                    killed = True
            if killed:
                break
            await asyncio.sleep(0.01)
        assert killed, "pg_restore never ran"
        done = await wait_job(c, job_id)
    assert done["status"] == "failed"
    assert "rolled back" in done["error"]["detail"]
    assert await fingerprint(db) == changed  # nothing of the half restore was committed


async def test_in_place_replaces_objects_that_live_in_no_schema(make_settings: Any) -> None:
    """A publication, a foreign server and its user mapping survive DROP SCHEMA; the dump's
    plain CREATE of each must not then fail on them."""
    db, settings = await plain_target(make_settings, "globalip", 100)
    psql(db, "-c", "CREATE FOREIGN DATA WRAPPER pgv_fdw; "
                   "CREATE SERVER pgv_srv FOREIGN DATA WRAPPER pgv_fdw; "
                   "CREATE USER MAPPING FOR postgres SERVER pgv_srv; "
                   "CREATE PUBLICATION pgv_pub FOR TABLE public.t")
    async with running_app(settings) as c:
        job = await backup(c, "globalip")
        before, done = await change_then_restore_in_place(
            c, "globalip", db, job["result"]["backup_id"], "DELETE FROM sales.orders")
    assert done["status"] == "succeeded", done["error"]
    assert await fingerprint(db) == before
    published = psql(db, "-Atc", "SELECT count(*) FROM pg_publication_tables "
                                 "WHERE pubname = 'pgv_pub'").stdout.strip()
    assert published == "1"


async def test_the_restore_script_has_one_transaction_whose_commit_is_held_back(
        tmp_path: Path) -> None:
    """Without pg_restore's --single-transaction its script commits large objects on its own,
    and with them whatever pgvault's transaction had done (the DROP SCHEMA and the data)."""
    db = await create_db(f"{PREFIX}_loscript")
    psql(db, "-c", "CREATE TABLE docs (id int PRIMARY KEY, body oid); "
                   "INSERT INTO docs VALUES (1, lo_from_bytea(0, 'x'))")
    dump = tmp_path / "lo.dump"
    subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "-Fc", "-Z0", "-f", str(dump),
                    "--", db], check=True)
    pg_restore = pg_clients.discover().choose("pg_restore", 15)
    script = (await run(pg_tools.pg_restore_script_stage(pg_restore, dump))).decode()
    statements = [line for line in script.splitlines() if line in ("BEGIN;", "COMMIT;")]
    assert statements == ["BEGIN;", "COMMIT;"]
    sql = [line for line in script.splitlines()
           if line.strip() and not line.startswith(("--", "\\"))]
    assert "lo_open" in script and sql[-1] == "COMMIT;"
    tail = script.encode()[-in_place.SCRIPT_TAIL:]
    held = in_place._without_commit(tail)
    assert b"COMMIT;" not in held and len(held) == len(tail) - len(b"COMMIT;\n")
    cut = script.encode()[:script.rindex("COMMIT;")]  # a script that stopped short
    with pytest.raises(StepFailed):
        in_place._without_commit(cut[-in_place.SCRIPT_TAIL:])
    with pytest.raises(StepFailed):  # a statement after the COMMIT: not the script's end
        in_place._without_commit(tail + b"DROP TABLE docs;\n")


def schema_dump(db: str) -> str:
    """``pg_dump --schema-only`` without the random \\restrict key lines."""
    out = subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "--schema-only", "--", db],
                         check=True, capture_output=True, text=True).stdout
    return "\n".join(line for line in out.splitlines()
                     if not line.startswith(("\\restrict ", "\\unrestrict ")))


async def test_in_place_leaves_alone_a_schema_the_archive_does_not_hold(
        make_settings: Any) -> None:
    """Issue 7.1: the excluded schema sales next to "sales archive": the restore must replace
    "sales archive" and not so much as touch sales."""
    db, settings = await plain_target(make_settings, "exclip", 100)
    settings.targets["exclip"].exclude_schemas.append("sales")
    psql(db, "-c", 'DROP VIEW public.v; ALTER TABLE sales.orders DROP CONSTRAINT orders_t_id_fkey; '
                   'CREATE SCHEMA "sales archive"; '
                   'CREATE TABLE "sales archive".orders AS SELECT * FROM sales.orders')
    async with running_app(settings) as c:
        job = await backup(c, "exclip")
        bid = job["result"]["backup_id"]
        psql(db, "-c", "INSERT INTO sales.orders VALUES (1000, 1); "
                       'DELETE FROM "sales archive".orders WHERE id > 50')
        before = await fingerprint(db)
        done = await restore(c, "exclip", {"backup_id": bid, "mode": "in_place",
                                           "confirm": "exclip"})
        doc = (await c.get(f"/v1/targets/exclip/archives/{bid}", headers=auth("viewer"))).json()
    assert done["status"] == "succeeded", done["error"]
    after = await fingerprint(db)
    assert after["sales.orders"] == before["sales.orders"]
    assert after["sales.orders"][0] == 101  # the row added after the backup is still there
    assert after['"sales archive".orders'][0] == 100
    # what the restore replaced: the schemas read in the backup's snapshot
    assert [s["name"] for s in doc["manifest"]["schemas"]] == ["public", "sales archive"]


async def test_in_place_replaces_transforms_and_table_access_methods(make_settings: Any) -> None:
    """Issue 7.9: a transform and a table access method live in no schema; the dump's CREATE
    of each must not fail on the target's present one."""
    db, settings = await plain_target(make_settings, "amip", 100)
    psql(db, "-c", "CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler; "
                   "CREATE TABLE public.h (id int) USING heap2; "
                   "INSERT INTO public.h SELECT generate_series(1, 10); "
                   "CREATE TRANSFORM FOR integer LANGUAGE sql (FROM SQL WITH FUNCTION "
                   "prsd_lextype(internal), TO SQL WITH FUNCTION int4recv(internal))")
    async with running_app(settings) as c:
        job = await backup(c, "amip")
        before, done = await change_then_restore_in_place(
            c, "amip", db, job["result"]["backup_id"],
            "DELETE FROM public.h; DELETE FROM sales.orders")
    assert done["status"] == "succeeded", done["error"]
    assert await fingerprint(db) == before
    method = psql(db, "-Atc", "SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                              "WHERE c.oid = 'public.h'::regclass").stdout.strip()
    assert method == "heap2"
    transforms = psql(db, "-Atc", "SELECT count(*) FROM pg_transform").stdout.strip()
    assert transforms == "1"


async def test_in_place_brings_public_back_as_the_source_had_it(make_settings: Any) -> None:
    """Issue 7.10: public's comment (here the default one, which dumps leave out), owner and
    ACL: the target's schema dump after the restore is the source's."""
    db, settings = await plain_target(make_settings, "pubip", 100)
    async with running_app(settings) as c:
        job = await backup(c, "pubip")
        source = schema_dump(db)
        psql(db, "-c", "COMMENT ON SCHEMA public IS 'changed'; "
                       "REVOKE USAGE ON SCHEMA public FROM PUBLIC")
        done = await restore(c, "pubip", {"backup_id": job["result"]["backup_id"],
                                          "mode": "in_place", "confirm": "pubip"})
        assert done["status"] == "succeeded", done["error"]
        assert schema_dump(db) == source
        # and a source whose public differs from the default: its own owner, ACL and comment
        psql(db, "-c", "COMMENT ON SCHEMA public IS 'our public'; "
                       "ALTER SCHEMA public OWNER TO postgres; "
                       "REVOKE USAGE ON SCHEMA public FROM PUBLIC")
        job = await backup(c, "pubip")
        source = schema_dump(db)
        psql(db, "-c", "COMMENT ON SCHEMA public IS NULL; "
                       "ALTER SCHEMA public OWNER TO pg_database_owner; "
                       "GRANT CREATE ON SCHEMA public TO PUBLIC")
        done = await restore(c, "pubip", {"backup_id": job["result"]["backup_id"],
                                          "mode": "in_place", "confirm": "pubip"})
    assert done["status"] == "succeeded", done["error"]
    assert schema_dump(db) == source
    assert "COMMENT ON SCHEMA public IS 'our public';" in source


async def test_in_place_of_an_archive_without_its_schema_list(make_settings: Any, s3: Any,
                                                              bucket: str) -> None:
    """An archive from before the manifest listed its schemas: the server names them (from a
    scratch database); one that also holds schema-less objects is refused, a new database
    still works."""
    db, settings = await plain_target(make_settings, "oldip", 100)
    settings.targets["oldip"].exclude_schemas.append("sales")
    psql(db, "-c", "DROP VIEW public.v; ALTER TABLE sales.orders DROP CONSTRAINT orders_t_id_fkey; "
                   'CREATE SCHEMA "sales archive"; '
                   'CREATE TABLE "sales archive".orders AS SELECT * FROM sales.orders')

    async def old_backup(c: Any) -> str:
        bid: str = (await backup(c, "oldip"))["result"]["backup_id"]
        key = f"archives/oldip/{bid}/manifest.json"
        doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        del doc["schemas"], doc["schemaless_objects"]
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
        return bid

    async with running_app(settings) as c:
        bid = await old_backup(c)
        psql(db, "-c", "INSERT INTO sales.orders VALUES (1000, 1); "
                       'DELETE FROM "sales archive".orders')
        done = await restore(c, "oldip", {"backup_id": bid, "mode": "in_place",
                                          "confirm": "oldip"})
        assert done["status"] == "succeeded", done["error"]
        after = await fingerprint(db)
        assert after["sales.orders"][0] == 101 and after['"sales archive".orders'][0] == 100

        psql(db, "-c", "CREATE ACCESS METHOD heap2 TYPE TABLE HANDLER heap_tableam_handler")
        bid = await old_backup(c)
        psql(db, "-c", "DELETE FROM public.t")
        before = await fingerprint(db)
        done = await restore(c, "oldip", {"backup_id": bid, "mode": "in_place",
                                          "confirm": "oldip"})
        assert done["status"] == "failed"
        assert "new_database" in done["error"]["detail"], done["error"]
        assert await fingerprint(db) == before
        copy = await restore(c, "oldip", {"backup_id": bid, "database": f"{PREFIX}_oldcopy"})
    assert copy["status"] == "succeeded", copy["error"]
    assert await scratch_names() == []


async def scratch_names() -> list[str]:
    conn = await admin_conn()
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'pgvault\\_names\\_%'")]
    finally:
        await conn.close()


async def test_a_name_cannot_forge_a_table_of_contents_entry(tmp_path: Path) -> None:
    """pg_restore --list writes a newline in a name as a space: a schema named like a large
    object's entry stays on its own line and is no large object (entries are chosen by type)."""
    db = await create_db(f"{PREFIX}_forge")
    forged = "x\n9999; 2613 4242 BLOB - 4242 postgres"
    psql(db, "-c", f'CREATE SCHEMA "{forged}"; CREATE TABLE "{forged}".t (id int)')
    dump = tmp_path / "forge.dump"
    subprocess.run(["pg_dump", "-h", PG_HOST, "-U", "postgres", "-Fc", "-f", str(dump), "--", db],
                   check=True)
    pg_restore = pg_clients.discover().choose("pg_restore", 15)
    toc = (await run(pg_tools.pg_restore_list_stage(pg_restore, dump))).decode()
    assert not any(line.startswith("9999;") for line in toc.splitlines())
    assert in_place.large_object_entries(toc) == []
    assert len(pg_tools.toc_entries(toc, "SCHEMA")) == 1


async def test_in_place_replaces_a_subscription(make_settings: Any) -> None:
    """A subscription lives in no schema either; pg_dump (as a superuser) writes a plain
    CREATE SUBSCRIPTION for it."""
    db, settings = await plain_target(make_settings, "subip", 100)
    psql(db, "-c", "CREATE SUBSCRIPTION \"Sub\nx\" CONNECTION 'host=127.0.0.1 port=1 "
                   "dbname=nowhere' PUBLICATION p WITH (connect = false, slot_name = 'sub_slot')")
    try:
        async with running_app(settings) as c:
            job = await backup(c, "subip")
            before = await fingerprint(db)
            psql(db, "-c", "DELETE FROM sales.orders")
            done = await restore(c, "subip", {"backup_id": job["result"]["backup_id"],
                                              "mode": "in_place", "confirm": "subip"})
        assert done["status"] == "succeeded", done["error"]
        assert await fingerprint(db) == before
        assert done["result"]["checklist"]["subscriptions_to_enable"] == ["Sub\nx"]
    finally:  # a database with a subscription cannot be dropped
        psql(db, "-c", "ALTER SUBSCRIPTION \"Sub\nx\" DISABLE; "
                       "ALTER SUBSCRIPTION \"Sub\nx\" SET (slot_name = NONE); "
                       "DROP SUBSCRIPTION \"Sub\nx\"")
