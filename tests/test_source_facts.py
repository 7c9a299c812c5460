"""A restore test judges the restore, not the source: what the source had itself (NOT VALID
constraints, a partitioned index created ON ONLY its parent) comes back as it was and passes."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import PREFIX, admin_conn, auth, backup, create_db, dsn, running_app, wait_job

SOURCE_SQL = """
CREATE DOMAIN public.posint AS int;
CREATE TABLE public.parent (id int PRIMARY KEY);
CREATE TABLE public."Child Table" (id int, parent_id int, n public.posint, note text);
INSERT INTO public."Child Table" VALUES (1, 99, -1, 'orphan, negative');
ALTER DOMAIN public.posint ADD CONSTRAINT posint_check CHECK (VALUE > 0) NOT VALID;
ALTER TABLE public."Child Table" ADD CONSTRAINT "fk not valid"
    FOREIGN KEY (parent_id) REFERENCES public.parent NOT VALID;
ALTER TABLE public."Child Table" ADD CONSTRAINT note_short CHECK (length(note) < 5) NOT VALID;
CREATE TABLE public.measure (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE public.measure_2026 PARTITION OF public.measure
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO public.measure VALUES ('2026-03-01', 1);
-- ON ONLY the parent, never attached: invalid, and pg_dump reproduces it so.
CREATE INDEX measure_v_only ON ONLY public.measure (v);
"""


async def test_verify_passes_on_what_the_source_itself_has(make_settings: Any, s3: Any,
                                                            bucket: str) -> None:
    db = await create_db(f"{PREFIX}_notvalid")
    conn = await admin_conn(db)
    try:
        await conn.execute(SOURCE_SQL)
    finally:
        await conn.close()
    settings = make_settings(targets={"notvalid": {"dsn": dsn(db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        backup_id = (await backup(c, "notvalid"))["result"]["backup_id"]
        key = f"archives/notvalid/{backup_id}/manifest.json"
        doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        assert doc["invalid_indexes"] == [
            {"schema": "public", "table": "measure", "name": "measure_v_only"}]
        assert {(x["table"], x["domain"], x["name"]) for x in doc["not_valid_constraints"]} == {
            ("Child Table", None, "fk not valid"), ("Child Table", None, "note_short"),
            (None, "posint", "posint_check")}

        done = await _verify(c, "notvalid", backup_id)
        assert done["status"] == "succeeded", done["error"]
        assert "(1 invalid index(es) and 3 NOT VALID constraint(s), as in the source)" \
            in done["summary"]
        result = done["result"]
        assert [(i["name"], i["in_source"]) for i in result["invalid_indexes"]] == [
            ("measure_v_only", True)]
        # The domain's constraint is counted too.
        assert sorted((x["name"], x["in_source"]) for x in result["unvalidated_constraints"]) \
            == [("fk not valid", True), ("note_short", True), ("posint_check", True)]

        resp = await c.post("/v1/targets/notvalid/restores", headers=auth("admin"),
                            json={"backup_id": backup_id, "database": f"{PREFIX}_notvalid_r"})
        restored = await wait_job(c, resp.json()["id"], timeout=180)
        assert restored["status"] == "succeeded", restored["error"]
        assert "0 invalid index(es) (+1 as in the source)" in restored["summary"]

        # A manifest from before invalid indexes were recorded: none is excused, as before.
        del doc["invalid_indexes"]
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
        old = await _verify(c, "notvalid", backup_id)
    assert old["status"] == "failed"
    assert old["error"]["detail"] == "checks: 1 invalid index(es) the source did not have"


async def _verify(c: Any, target: str, backup_id: str) -> dict[str, Any]:
    resp = await c.post(f"/v1/targets/{target}/archives/{backup_id}/verify",
                        headers=auth("operator"), json={"level": "restore"})
    assert resp.status_code == 202, resp.text
    return await wait_job(c, resp.json()["id"], timeout=180)


async def test_parallel_restore_of_an_inherited_not_valid_check(make_settings: Any) -> None:
    # pg_restore --jobs adds the parent's NOT VALID check (post-data, waiting only for the
    # parent's rows) before the child's rows are in, and the child's COPY fails on old rows.
    # A big table keeps one worker busy meanwhile: without the fix this fails nearly always.
    db = await create_db(f"{PREFIX}_inherit")
    conn = await admin_conn(db)
    try:
        await conn.execute("""
            CREATE TABLE cities (name text PRIMARY KEY, population real);
            CREATE TABLE zcapitals (state char(2)) INHERITS (cities);
            INSERT INTO cities SELECT 'c' || g, g FROM generate_series(1, 2000) g;
            INSERT INTO cities VALUES ('Ghost Town', -1);
            INSERT INTO zcapitals VALUES ('Ruin', -5, 'XX');
            CREATE TABLE filler AS SELECT g FROM generate_series(1, 200000) g;
            ALTER TABLE cities ADD CONSTRAINT population_positive CHECK (population >= 0)
                NOT VALID;
            ANALYZE;""")
    finally:
        await conn.close()
    settings = make_settings(targets={"inherit": {"dsn": dsn(db), "retention_min_backups": 1}})
    async with running_app(settings) as c:
        backup_id = (await backup(c, "inherit"))["result"]["backup_id"]
        resp = await c.post("/v1/targets/inherit/restores", headers=auth("admin"),
                            json={"backup_id": backup_id, "database": f"{PREFIX}_inherit_r",
                                  "jobs": 2})
        done = await wait_job(c, resp.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["rows_match"] is True
