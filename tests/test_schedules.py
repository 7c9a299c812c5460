"""Schedules fire once per slot across replicas; webhooks deliver job outcomes and RPO breaches."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import auth, backup, dsn, running_app, wait_job


class Receiver:
    """A webhook endpoint on loopback that fails its first ``fail_first`` requests with 503."""

    def __init__(self, fail_first: int = 1) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.attempts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.attempts += 1
                if receiver.attempts <= fail_first:
                    self.send_response(503)
                else:
                    receiver.received.append((self.path, body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_each_slot_fires_once_across_replicas(make_settings: Any, pagila_db: str) -> None:
    schedules = {"backup": "0 * * * *", "retention": "", "verify": "", "maintenance": "",
                 "reconcile": ""}
    settings = make_settings(targets={"sched": {"dsn": dsn(pagila_db), "schedules": schedules}})
    t0 = datetime(2031, 1, 1, 10, 30, tzinfo=UTC)
    async with running_app(settings) as one, running_app(settings) as two:
        first = one.app.state.services.scheduler  # type: ignore[attr-defined]
        second = two.app.state.services.scheduler  # type: ignore[attr-defined]
        assert await first.tick(t0) == []  # first sight: the 10:00 slot is a baseline
        assert await second.tick(t0) == []

        fired = await first.tick(t0 + timedelta(hours=1))  # the 11:00 slot
        assert [(f["kind"], f["outcome"]) for f in fired] == [("backup", "queued")]
        assert await second.tick(t0 + timedelta(hours=1, minutes=5)) == []  # same slot
        job = await wait_job(one, str(fired[0]["job_id"]))
        assert job["status"] == "succeeded" and job["requested_by"] == "scheduler"

        # Down from 11:30 to 15:10: four missed slots fire once, for the latest one.
        late = await second.tick(t0 + timedelta(hours=4, minutes=40))
        assert len(late) == 1 and late[0]["slot"] == datetime(2031, 1, 1, 15, tzinfo=UTC)
        assert await first.tick(t0 + timedelta(hours=4, minutes=41)) == []
        await wait_job(one, str(late[0]["job_id"]))


async def test_scheduled_verify_and_maintenance(make_settings: Any, pagila_db: str) -> None:
    schedules = {"backup": "", "retention": "", "verify": "0 3 1 * *",
                 "maintenance": "0 2 * * 0", "reconcile": ""}
    settings = make_settings(targets={"sched2": {"dsn": dsn(pagila_db),
                                                 "schedules": schedules}})
    async with running_app(settings) as c:
        scheduler = c.app.state.services.scheduler  # type: ignore[attr-defined]
        made = await backup(c, "sched2")
        t0 = datetime(2031, 2, 2, tzinfo=UTC)
        assert await scheduler.tick(t0) == []
        fired = {f["kind"]: f for f in await scheduler.tick(t0 + timedelta(days=35))}
        assert set(fired) == {"verify", "maintenance"}
        verify = await wait_job(c, str(fired["verify"]["job_id"]), timeout=180)
        assert verify["status"] == "succeeded", verify
        assert verify["result"]["level"] == "restore"
        assert verify["result"]["backup_id"] == made["result"]["backup_id"]
        maint = await wait_job(c, str(fired["maintenance"]["job_id"]))
        assert maint["result"]["task"] == "analyze"


async def test_webhooks_deliver_with_retry_and_rpo_alerts_once(
        make_settings: Any, pagila_db: str, receiver: Receiver) -> None:
    settings = make_settings(
        webhook_backoff_s=0.05,
        webhooks=[{"url": f"{receiver.url}/generic"},
                  {"url": f"{receiver.url}/slack", "format": "slack",
                   "events": ["job.failed", "rpo.breach"]}],
        targets={"hooked": {"dsn": dsn(pagila_db)},
                 "gone": {"dsn": f"postgresql://postgres@127.0.0.1:{closed_port()}/x"}})
    async with running_app(settings) as c:
        services = c.app.state.services  # type: ignore[attr-defined]
        job = await backup(c, "hooked")
        failed = (await c.post("/v1/targets/gone/backups", headers=auth("operator"))).json()
        failed = await wait_job(c, failed["id"])
        assert failed["status"] == "failed"
        now = datetime.now(UTC)
        assert await services.scheduler.check_rpo(now) == ["gone"]
        assert await services.scheduler.check_rpo(now + timedelta(minutes=5)) == []
        await services.resources.notifier.close()
    generic = [b for p, b in receiver.received if p == "/generic"]
    slack = [b for p, b in receiver.received if p == "/slack"]
    events = {(b["event"], b["target"]) for b in generic}
    assert ("job.succeeded", "hooked") in events and ("job.failed", "gone") in events
    assert ("rpo.breach", "gone") in events
    done = next(b for b in generic if b["event"] == "job.succeeded")
    assert done["job"]["result"]["backup_id"] == job["result"]["backup_id"]
    assert len(slack) == 2 and all(set(b) == {"text"} for b in slack)
    assert any("RPO breached for gone" in b["text"] for b in slack)
    assert receiver.attempts == len(receiver.received) + 1  # the first one was retried
