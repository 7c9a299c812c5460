"""manifest.json is a storage contract (SPEC 6): archives written by older pgvault versions must
keep restoring, and older versions must read what this one writes. So its keys stay exactly as
they were, a field pgvault does not know is kept, and an old manifest (fields absent) restores.
Real backups and restores against PostgreSQL, gpg and moto's S3 server."""

from __future__ import annotations

import json
from typing import Any

from app.backup.manifest import Manifest
from tests.conftest import PREFIX, admin_conn, auth, backup, create_db, dsn, running_app, wait_job

# The keys pgvault has always written, in their order (app/backup/service.py ``_manifest`` before
# the typed model): an older pgvault reads exactly these.
MANIFEST_KEYS = [
    "format_version", "backup_id", "target", "label", "job_id", "requested_by", "created_at",
    "finished_at", "server_version", "server_version_num", "pg_dump_version", "tools",
    "database", "database_size_bytes", "database_encoding", "database_collate",
    "database_ctype", "dump_format", "compression", "compression_level", "encryption",
    "snapshot", "exclude_schemas", "row_counts", "objects", "tables", "materialized_views",
    "subscriptions", "extensions", "schemas", "schemaless_objects", "invalid_indexes",
    "not_valid_constraints", "database_properties",
    "anomalies",  # SPEC 2.14, since the anomaly guard
]
NESTED_KEYS = {
    "objects": ["key", "kind", "size_bytes", "sha256", "encrypted"],
    "tables": ["schema", "name", "rows"],
    "materialized_views": ["schema", "name", "populated"],
    "extensions": ["name", "version"],
    "schemas": ["name", "owner", "comment"],
    "schemaless_objects": ["type", "names"],
    "invalid_indexes": ["schema", "table", "name"],
    "not_valid_constraints": ["schema", "table", "domain", "name"],
}
# What SPEC 6 promises, and nothing else: what the oldest manifests hold.
SPEC_FIELDS = ["format_version", "backup_id", "target", "created_at", "finished_at",
               "server_version", "pg_dump_version", "database_size_bytes", "compression",
               "objects", "tables"]


async def _small_target(make_settings: Any, name: str) -> tuple[str, Any]:
    db = await create_db(f"{PREFIX}_{name}")
    conn = await admin_conn(db)
    try:
        await conn.execute("""
            CREATE TABLE public.t (id int PRIMARY KEY, note text);
            INSERT INTO public.t SELECT g, md5(g::text) FROM generate_series(1, 500) g;
            CREATE INDEX t_note ON public.t (note);
            CREATE MATERIALIZED VIEW public.mv AS SELECT count(*) FROM public.t;
            CREATE TABLE public.p (id int);
            ALTER TABLE public.p ADD CONSTRAINT positive CHECK (id > 0) NOT VALID;
            CREATE SCHEMA "Sales q";
            CREATE TABLE "Sales q".o (id int);
            INSERT INTO "Sales q".o VALUES (1), (2);
            CREATE PUBLICATION pub_t FOR TABLE public.t;""")
        await conn.execute(f"ALTER DATABASE \"{db}\" SET work_mem = '8MB'")
        await conn.execute("""
            CREATE TABLE public.parted (id int) PARTITION BY RANGE (id);
            CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (10);
            CREATE INDEX parted_only ON ONLY public.parted (id);""")
    finally:
        await conn.close()
    return db, make_settings(targets={name: {"dsn": dsn(db), "retention_min_backups": 1}})


def _stored(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    return loaded


async def test_a_written_manifest_has_exactly_the_keys_pgvault_always_wrote(
        make_settings: Any, s3: Any, bucket: str) -> None:
    _, settings = await _small_target(make_settings, "mfkeys")
    async with running_app(settings) as c:
        bid = (await backup(c, "mfkeys"))["result"]["backup_id"]
        doc = _stored(s3, bucket, f"archives/mfkeys/{bid}/manifest.json")
        assert list(doc) == MANIFEST_KEYS
        for field, keys in NESTED_KEYS.items():
            assert doc[field], field  # the database has one of each
            for entry in doc[field]:
                assert list(entry) == keys, (field, entry)
        assert list(doc["tools"]) == ["pg_dump", "pg_dumpall"]
        assert list(doc["encryption"]) == ["format", "recipients"]
        assert list(doc["database_properties"]) == ["acl", "comment", "settings"]
        assert doc["database_properties"]["settings"] == [{"role": None, "name": "work_mem"}]
        assert [list(s) for s in doc["schemaless_objects"]] == [["type", "names"]]
        # Times as isoformat() writes them, ids as text.
        assert doc["created_at"].endswith("+00:00") and doc["label"] is None
        assert isinstance(doc["job_id"], str)
        # The archive's page shows the manifest as stored, not as this version models it.
        detail = await c.get(f"/v1/targets/mfkeys/archives/{bid}", headers=auth("viewer"))
        assert detail.status_code == 200, detail.text
        assert detail.json()["manifest"] == doc


async def test_an_old_manifest_and_a_newer_ones_unknown_fields_still_restore(
        make_settings: Any, s3: Any, bucket: str) -> None:
    """An archive whose manifest holds only what SPEC 6 promises (an older pgvault), plus fields
    this version does not know (a newer one): listed complete, shown as stored, and restored
    into a new database with its rows checked."""
    _, settings = await _small_target(make_settings, "mfold")
    async with running_app(settings) as c:
        bid = (await backup(c, "mfold"))["result"]["backup_id"]
        key = f"archives/mfold/{bid}/manifest.json"
        doc = _stored(s3, bucket, key)
        old = {field: doc[field] for field in SPEC_FIELDS}
        old["objects"] = [{**o, "from_the_future": {"x": [1]}} for o in old["objects"]]
        old["tables"] = [{**t, "estimate": 7} for t in old["tables"]]
        old["retention_class"] = "gold"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(old).encode())
        c.app.state.resources.manifests.clear()  # type: ignore[attr-defined]

        listing = (await c.get("/v1/targets/mfold/archives", headers=auth("viewer"))).json()
        assert [(a["backup_id"], a["status"]) for a in listing["items"]] == [(bid, "complete")]
        detail = (await c.get(f"/v1/targets/mfold/archives/{bid}", headers=auth("viewer"))).json()
        assert detail["manifest"] == old
        assert detail["job_id"] is None and detail["label"] is None

        resp = await c.post("/v1/targets/mfold/restores", headers=auth("admin"),
                            json={"backup_id": bid, "database": f"{PREFIX}_mfold_copy"})
        assert resp.status_code == 202, resp.text
        done = await wait_job(c, resp.json()["id"], timeout=180)
        assert done["status"] == "succeeded", done["error"]
        assert done["result"]["rows_match"] is True
        assert done["result"]["checklist"]["row_counts"]["tables_checked"] == len(old["tables"])
        # No list of its source's invalid indexes: none is excused, as before.
        assert [i["in_source"] for i in done["result"]["checklist"]["invalid_indexes"]] == [None]

        resp = await c.post(f"/v1/targets/mfold/archives/{bid}/verify", headers=auth("operator"),
                            json={"level": "checksum"})
        verified = await wait_job(c, resp.json()["id"])
        assert verified["status"] == "succeeded", verified["error"]
        assert verified["result"]["objects_checked"] == len(old["objects"])


def test_the_model_keeps_every_field_it_reads_and_defaults_what_old_manifests_lack() -> None:
    old = {"backup_id": "20200101T000000Z-aaaaaa", "target": "t",
           "objects": [{"key": "database.dump.zst.gpg", "size_bytes": 3, "sha256": "ab",
                        "encrypted": True, "kind": "database", "later": 1}],
           "tables": [{"schema": "a b", "name": "X", "rows": None}], "newer": {"n": [None]}}
    parsed = Manifest.model_validate(old)
    assert parsed.as_stored() == old
    # What readers assumed of absent fields with .get(): None where "unknown" differs from
    # "none" (schemas, the source's invalid indexes and NOT VALID constraints), else empty.
    assert parsed.schemas is None and parsed.invalid_indexes is None
    assert parsed.not_valid_constraints is None and parsed.compression is None
    assert parsed.subscriptions == [] and parsed.schemaless_objects == []
    assert parsed.exclude_schemas == [] and parsed.tools.as_dict() == {}
    assert parsed.tables[0].schema_ == "a b" and parsed.tables[0].rows is None


def test_a_manifest_whose_fields_a_restore_would_trip_on_is_unreadable_up_front() -> None:
    """The model's validation is the verdict: a field of the wrong shape names itself, as the
    archive's reason, instead of failing a restore half-way (a table list that is text)."""
    import pytest

    from app.archives.service import ArchiveUnreadable, _check_manifest

    bid = "20200101T000000Z-aaaaaa"
    good = {"backup_id": bid, "target": "t", "objects": [], "tables": []}
    assert _check_manifest(json.dumps(good).encode(), "t", bid).backup_id == bid
    for bad, reason in [({"tables": "public.t"}, "malformed fields: tables"),
                        ({"objects": [{"key": "x"}]}, "malformed fields: objects"),
                        ({"target": "u"}, "names another archive")]:
        with pytest.raises(ArchiveUnreadable, match=reason):
            _check_manifest(json.dumps({**good, **bad}).encode(), "t", bid)
