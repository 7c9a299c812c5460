"""Monitoring and maintenance through the API (the views themselves: tests/monitoring/)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from tests.conftest import auth, dsn, running_app, wait_job


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_snapshot_has_every_view_and_a_summary(client: Any) -> None:
    resp = await client.get("/v1/targets/pagila/monitoring/snapshot", headers=auth("viewer"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert {"connections", "bloat", "indexes", "tables", "summary"} <= body.keys()
    assert "connections" in body["summary"]
    for view in ("connections", "bloat", "indexes", "tables"):
        one = await client.get(f"/v1/targets/pagila/monitoring/{view}", headers=auth("viewer"))
        assert one.status_code == 200, one.text
    missing = await client.get("/v1/targets/pagila/monitoring/locks", headers=auth("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    anonymous = await client.get("/v1/targets/pagila/monitoring/snapshot")
    assert anonymous.status_code == 401


async def test_down_target_fails_fast_while_the_rest_answers(make_settings: Any,
                                                             pagila_db: str) -> None:
    settings = make_settings(monitoring_connect_timeout_s=1.5, targets={
        "pagila": {"dsn": dsn(pagila_db)},
        "down": {"dsn": f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"}})
    async with running_app(settings) as c:
        started = time.monotonic()
        down = await c.get("/v1/targets/down/monitoring/snapshot", headers=auth("viewer"))
        elapsed = time.monotonic() - started
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert "unreachable" in down.json()["detail"]
        assert "postgresql://" not in down.json()["detail"]
        assert elapsed < 3
        assert (await c.get("/healthz")).status_code == 200
        ok = await c.get("/v1/targets/pagila/monitoring/connections", headers=auth("viewer"))
        assert ok.status_code == 200


async def test_fifty_concurrent_monitoring_calls_during_a_backup(make_settings: Any,
                                                                 big_db: str) -> None:
    settings = make_settings(targets={"big": {"dsn": dsn(big_db), "row_counts": False}})
    async with running_app(settings) as c:
        resp = await c.post("/v1/targets/big/backups", headers=auth("operator"))
        job_id = resp.json()["id"]
        for _ in range(100):
            job = (await c.get(f"/v1/jobs/{job_id}", headers=auth("viewer"))).json()
            if job["phase"] == "dump":
                break
            await asyncio.sleep(0.05)
        views = ["connections", "indexes", "tables", "bloat", "snapshot"]
        latencies: list[float] = []

        async def call(i: int) -> int:
            t0 = time.perf_counter()
            r = await c.get(f"/v1/targets/big/monitoring/{views[i % len(views)]}",
                            headers=auth("viewer"))
            latencies.append(time.perf_counter() - t0)
            return int(r.status_code)

        statuses = await asyncio.gather(*(call(i) for i in range(50)))
        job = await wait_job(c, job_id)
    assert statuses == [200] * 50
    assert job["status"] == "succeeded"
    latencies.sort()
    print(f"monitoring p50={latencies[25]:.3f}s p99={latencies[49]:.3f}s during backup")


async def test_maintenance_jobs(client: Any, pagila_db: str) -> None:
    for task in ("analyze", "refresh_materialized_views"):
        resp = await client.post("/v1/targets/pagila/maintenance", headers=auth("operator"),
                                 json={"task": task})
        assert resp.status_code == 202, resp.text
        job = await wait_job(client, resp.json()["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["task"] == task
    views = job["result"]["materialized_views"]
    assert [v["name"] for v in views] == ["public.rental_by_category"]
    bad = await client.post("/v1/targets/pagila/maintenance", headers=auth("operator"),
                            json={"task": "vacuum_full"})
    assert bad.status_code == 422
    viewer = await client.post("/v1/targets/pagila/maintenance", headers=auth("viewer"),
                               json={"task": "analyze"})
    assert viewer.status_code == 403


async def test_concurrent_identical_calls_share_one_query(make_settings: Any,
                                                          pagila_db: str) -> None:
    settings = make_settings(targets={"pagila": {"dsn": dsn(pagila_db)}})
    async with running_app(settings) as c:
        pools = c.app.state.resources.monitoring  # type: ignore[attr-defined]
        calls = {"n": 0}
        run = pools.run

        async def counting(target: str, work: Any) -> Any:
            calls["n"] += 1
            return await run(target, work)

        pools.run = counting
        results = await asyncio.gather(*(
            c.get("/v1/targets/pagila/monitoring/tables", headers=auth("viewer"))
            for _ in range(20)))
    assert [r.status_code for r in results] == [200] * 20
    assert calls["n"] == 1
    assert len({r.json()["taken_at"] for r in results}) == 1
