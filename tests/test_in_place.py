"""In-place restores: all or nothing, on ordinary databases too."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil

from tests.conftest import admin_conn, auth, backup, create_db, dsn, running_app, wait_job
from tests.test_restore import fingerprint, restore


async def plain_target(make_settings: Any, name: str, rows: int) -> tuple[str, Any]:
    """A database as CREATE DATABASE makes it: public owned by pg_database_owner."""
    from tests.conftest import PREFIX

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
        before = await fingerprint(db)
        conn = await admin_conn(db)
        try:
            await conn.execute("DELETE FROM sales.orders; UPDATE public.t SET note = 'x'")
        finally:
            await conn.close()
        done = await restore(c, "plainip", {"backup_id": job["result"]["backup_id"],
                                            "mode": "in_place", "confirm": "plainip"})
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
            await conn.execute("CREATE SCHEMA audit; "
                               "CREATE VIEW audit.counts AS SELECT count(*) FROM public.t")
        finally:
            await conn.close()
        job = await backup(c, "depip")
        before = await fingerprint(db)
        done = await restore(c, "depip", {"backup_id": job["result"]["backup_id"],
                                          "mode": "in_place", "confirm": "depip"})
    assert done["status"] == "failed"
    assert "audit.counts" in done["error"]["detail"]
    assert await fingerprint(db) == before


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
