"""Job summaries are live and self-contained; a finished job keeps its final progress
(SPEC 2.13)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from app.backup.manifest import DATABASE_OBJECT
from tests.conftest import PREFIX, auth, dsn, running_app, wait_job
from tests.faults import FaultyProxy, is_upload_part

CLASS_NAME = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]+)*Error")


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data:"):]) for line in text.splitlines()
            if line.startswith("data:")]


async def test_running_backup_says_what_it_does_and_keeps_its_final_progress(
        make_settings: Any, big_db: str, s3_endpoint: str) -> None:
    with FaultyProxy(s3_endpoint) as proxy:
        proxy.rule = lambda m, p: 0.2 if is_upload_part(m, p) else None  # a dump worth watching
        settings = make_settings(targets={"live": {"dsn": dsn(big_db), "row_counts": False}},
                                 s3_endpoint_url=proxy.url)
        async with running_app(settings) as c:
            resp = await c.post("/v1/targets/live/backups", headers=auth("operator"))
            job_id = resp.json()["id"]
            assert resp.json()["summary"] == "backup of live queued"
            # The event stream ends with the job; collect it meanwhile.
            events = asyncio.create_task(c.get(f"/v1/jobs/{job_id}/events",
                                               headers=auth("viewer"), timeout=300))
            seen: list[dict[str, Any]] = []
            for _ in range(1200):
                job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
                seen.append(job)
                if job["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            streamed = sse_events((await events).text)
            # A verification keeps its download's counters too, past its last step.
            resp = await c.post(f"/v1/targets/live/archives/{job['result']['backup_id']}/verify",
                                headers=auth("operator"), json={"level": "checksum"})
            verified = await wait_job(c, resp.json()["id"])

    assert job["status"] == "succeeded", job
    dumping = [j["summary"] for j in seen if j["status"] == "running" and j["phase"] == "dump"]
    assert len(dumping) >= 3, [j["summary"] for j in seen]
    shape = re.compile(r"^backup of live: dumping, (\d+)% of ~\d+(\.\d)? MB "
                       r"\(\d+(\.\d)? [kMG]?B read, \d+(\.\d)? [kMG]?B uploaded\)$")
    assert all(shape.match(s) for s in dumping), dumping
    percents = [int(shape.match(s).group(1)) for s in dumping]  # type: ignore[union-attr]
    assert percents == sorted(percents) and percents[-1] > percents[0], dumping
    assert not any("queued" in j["summary"] for j in seen if j["status"] == "running")

    # The final progress stays: the dump's counters, not the manifest step's zeros.
    dump_object = next(o for o in job["result"]["objects"] if o["key"] == DATABASE_OBJECT)
    assert job["progress"]["bytes_uploaded"] == dump_object["size_bytes"]
    assert job["progress"]["bytes_done"] >= max(j["progress"]["bytes_done"] for j in seen) > 0
    assert streamed[-1]["status"] == "succeeded"
    assert streamed[-1]["progress"]["bytes_done"] == job["progress"]["bytes_done"] > 0
    assert streamed[-1]["summary"].startswith(f"backup {job['result']['backup_id']} of live")
    assert any(e["summary"].startswith("backup of live: dumping,") for e in streamed)

    assert verified["status"] == "succeeded", verified
    stored = sum(o["size_bytes"] for o in job["result"]["objects"])
    assert verified["progress"]["bytes_done"] == verified["progress"]["bytes_total"] == stored


async def test_failed_backup_names_target_step_and_cause_in_words(make_settings: Any) -> None:
    missing = f"{PREFIX}_No Such db"
    password = f"pw-{PREFIX}-secret"
    settings = make_settings(targets={"gone": {"dsn": dsn(missing, password=password)}})
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/gone/backups", headers=auth("operator"))
        job_id = resp.json()["id"]
        for _ in range(300):
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
            if job["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
    assert job["status"] == "failed", job
    assert job["summary"].startswith("backup of gone failed at connect: "), job["summary"]
    assert f'database "{missing}" does not exist' in job["summary"], job["summary"]
    assert f'database "{missing}" does not exist' in job["error"]["detail"]
    text = json.dumps(job)
    assert not CLASS_NAME.search(text), text
    assert password not in text


def test_restore_verify_and_retention_lines_carry_their_numbers() -> None:
    from app.jobs import summaries

    restore = summaries.running("restore", "demo", {"backup_id": "20261130T000000Z-abc123",
                                                    "mode": "new_database", "database": "copy"},
                                phase="download", bytes_done=12_300_000, bytes_total=40_100_000,
                                bytes_uploaded=0)
    assert restore == ("restore of demo 20261130T000000Z-abc123 into copy: downloading, 30% of "
                       "40.1 MB (12.3 MB done)")
    verify = summaries.running("verify", "demo", {"backup_id": "20261130T000000Z-abc123",
                                                  "level": "restore"},
                               phase="compare", bytes_done=0, bytes_total=None, bytes_uploaded=0)
    assert verify == ("restore verification of demo 20261130T000000Z-abc123: comparing row "
                      "counts with the manifest")
    retention = summaries.running("retention", "demo", {}, phase="delete", bytes_done=3,
                                  bytes_total=10, bytes_uploaded=0)
    assert retention == "retention of demo: deleting archives, 3 of 10 done"


async def test_connection_failures_are_told_in_words() -> None:
    """Real failed connections (no mock): each cause in words, no exception class name."""
    import asyncpg

    from app.integrations import pg_errors
    from tests.test_reliability import free_port

    cases = {
        "database": ({"database": f"{PREFIX}_Nope db"},
                     f'database "{PREFIX}_Nope db" does not exist'),
        "user": ({"user": f"{PREFIX}_nobody"}, f'the server refused user "{PREFIX}_nobody"'),
        "port": ({"port": free_port()}, "nothing accepts connections at 127.0.0.1:"),
    }
    for name, (change, words) in cases.items():
        args: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres",
                                "database": "postgres", **change}
        try:
            conn = await asyncpg.connect(**args, timeout=10)
        except Exception as exc:
            text = pg_errors.describe(exc, **args)
        else:
            await conn.close()
            raise AssertionError(f"{name}: connected")
        assert words in text, (name, text)
        assert not CLASS_NAME.search(text), (name, text)
