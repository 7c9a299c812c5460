"""/metrics after real jobs, read with Prometheus' own text parser (SPEC 2.8, 2.13)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.backup.manifest import backup_time
from tests.conftest import (
    PREFIX,
    auth,
    backup,
    dsn,
    migrated_db,
    running_app,
    start_uploading_backup,
    wait_job,
)
from tests.faults import FaultyProxy, is_upload_part

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Any) -> tuple[Samples, dict[str, str]]:
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(resp.text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_metrics_after_real_jobs(make_settings: Any, pagila_db: str, big_db: str,
                                       s3_endpoint: str) -> None:
    meta = await migrated_db(f"{PREFIX}_meta_metrics")  # its own: exact job counts
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.3 if is_upload_part(m, p) else None  # a backup to catch
        settings = make_settings(database_url=dsn(meta), s3_endpoint_url=proxy.url, targets={
            "mtr": {"dsn": dsn(pagila_db)},
            "mtrgone": {"dsn": dsn(f"{PREFIX}_mtr_missing")},
            "mtrbig": {"dsn": dsn(big_db), "row_counts": False},
        })
        async with running_app(settings) as c:
            before, _ = await scrape(c)
            assert value(before, "pgvault_archives", target="mtr") == 0
            assert value(before, "pgvault_jobs_total", kind="backup", outcome="succeeded") is None

            first = await backup(c, "mtr")
            second = await backup(c, "mtr")
            resp = await c.post("/v1/targets/mtrgone/backups", headers=auth("operator"))
            assert (await wait_job(c, resp.json()["id"]))["status"] == "failed"
            resp = await c.post(f"/v1/targets/mtr/archives/{second['result']['backup_id']}"
                                "/verify", headers=auth("operator"), json={"level": "checksum"})
            verified = await wait_job(c, resp.json()["id"])
            assert verified["status"] == "succeeded", verified

            # A backup while it runs: its bytes, then cancelled.
            running_id = await start_uploading_backup(c, "mtrbig")
            during, _ = await scrape(c)
            await c.post(f"/v1/jobs/{running_id}/cancel", headers=auth("operator"))
            assert (await wait_job(c, running_id))["status"] == "cancelled"
            after, types = await scrape(c)

    assert value(during, "pgvault_backup_running", target="mtrbig") == 1
    assert (value(during, "pgvault_backup_running_bytes", target="mtrbig") or 0) > 0
    assert (value(during, "pgvault_backup_running_uploaded_bytes", target="mtrbig") or 0) > 0
    assert value(during, "pgvault_backup_running_bytes", target="mtr") == 0
    assert value(after, "pgvault_backup_running", target="mtrbig") == 0
    assert value(after, "pgvault_backup_running_bytes", target="mtrbig") == 0

    # Counters, by kind and outcome.
    assert types["pgvault_jobs"] == "counter"
    assert value(after, "pgvault_jobs_total", kind="backup", outcome="succeeded") == 2
    assert value(after, "pgvault_jobs_total", kind="backup", outcome="failed") == 1
    assert value(after, "pgvault_jobs_total", kind="backup", outcome="cancelled") == 1
    assert value(after, "pgvault_jobs_total", kind="verify", outcome="succeeded") == 1

    # Durations: a histogram whose buckets add up.
    assert types["pgvault_job_duration_seconds"] == "histogram"
    labels = {"kind": "backup", "outcome": "succeeded"}
    assert value(after, "pgvault_job_duration_seconds_count", **labels) == 2
    total_s = value(after, "pgvault_job_duration_seconds_sum", **labels) or 0
    assert 0 < total_s < 120
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in after.items()
                     if k[0] == "pgvault_job_duration_seconds_bucket"
                     and {"kind": "backup", "outcome": "succeeded"}.items() <= dict(k[1]).items())
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1] == (float("inf"), 2)

    # Archives per target, from storage.
    assert value(after, "pgvault_storage_up", target="mtr") == 1
    assert value(after, "pgvault_archives", target="mtr") == 2
    assert value(after, "pgvault_archives_unverified", target="mtr") == 1
    assert value(after, "pgvault_archives_damaged", target="mtr") == 0
    assert value(after, "pgvault_archive_newest_timestamp_seconds", target="mtr") == (
        backup_time(second["result"]["backup_id"]).timestamp())
    assert value(after, "pgvault_archive_oldest_timestamp_seconds", target="mtr") == (
        backup_time(first["result"]["backup_id"]).timestamp())
    assert value(after, "pgvault_archives", target="mtrgone") == 0
    assert value(after, "pgvault_archive_newest_timestamp_seconds", target="mtrgone") is None

    # Last verification, last good backup, RPO.
    assert value(after, "pgvault_verification_last_success", target="mtr",
                 level="checksum") == 1
    assert value(after, "pgvault_verification_last_timestamp_seconds", target="mtr") == (
        ts(verified["finished_at"]))
    assert value(after, "pgvault_backup_last_success_timestamp_seconds", target="mtr") == (
        ts(second["finished_at"]))
    assert value(after, "pgvault_backup_last_size_bytes", target="mtr") == (
        second["result"]["size_bytes"])
    assert value(after, "pgvault_rpo_compliant", target="mtr") == 1
    assert value(after, "pgvault_rpo_compliant", target="mtrgone") == 0
