"""Storage that cannot be reached answers 503 problem+json on every API path that reads it."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tests.conftest import auth, running_app

BACKUP_ID = "20260101T000000Z-abcdef"


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_storage_is_503_on_api_paths(make_settings: Any) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    async with running_app(make_settings(s3_endpoint_url=endpoint)) as c:
        base = "/v1/targets/pagila"
        answers = await asyncio.gather(
            c.get(f"{base}/archives", headers=auth("viewer")),
            c.get(f"{base}/archives/{BACKUP_ID}", headers=auth("viewer")),
            c.delete(f"{base}/archives/{BACKUP_ID}", headers=auth("admin")),
            c.post(f"{base}/archives/{BACKUP_ID}/verify", headers=auth("operator"),
                   json={"level": "checksum"}),
            c.post(f"{base}/restores", headers=auth("admin"),
                   json={"backup_id": BACKUP_ID, "database": "outage_restore"}),
        )
    for resp in answers:
        assert resp.status_code == 503, (resp.request.method, resp.request.url, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        body = resp.json()
        assert body["status"] == 503
        assert "cannot connect to the S3 endpoint" in body["detail"], body
        assert "secret" not in resp.text.lower()
