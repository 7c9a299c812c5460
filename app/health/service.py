"""Readiness checks and the Prometheus figures (read from the metadata database, so every replica
reports the same)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from app.integrations import gpg
from app.jobs import repository as jobs_repo

if TYPE_CHECKING:
    from app.lifespan import Services


CHECK_TIMEOUT_S = 5.0


async def readiness(services: Services) -> dict[str, Any]:
    """Each dependency's check, run at once and each bounded: a hung endpoint is a failed check,
    never a hung or failed /readyz."""
    names = ("metadata_db", "storage", "gpg")
    results = await asyncio.gather(
        *(_bounded(check(services)) for check in (_metadata_db, _storage, _gpg)))
    return dict(zip(names, results, strict=True))


async def _bounded(check: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_S)
    except TimeoutError:
        return {"ok": False, "detail": f"no answer within {CHECK_TIMEOUT_S:g} s"}
    except Exception as exc:  # a check that fails in an unforeseen way is still just a failure
        return {"ok": False, "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}


async def _metadata_db(services: Services) -> dict[str, Any]:
    try:
        async with services.pool.acquire(timeout=CHECK_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")
    except Exception as exc:  # the DSN may be in the message: name the failure only
        return {"ok": False, "detail": f"unreachable: {type(exc).__name__}"}
    return {"ok": True}


async def _storage(services: Services) -> dict[str, Any]:
    await services.storage.check()
    return {"ok": True}


async def _gpg(services: Services) -> dict[str, Any]:
    try:
        keys = await gpg.check_recipients(services.settings.gpg_home,
                                          services.settings.gpg_recipients)
    except gpg.KeyringError as exc:
        return {"ok": False, "detail": str(exc)}
    # Backups need only the public keys; restores and verifications need a private one.
    return {"ok": True, "recipients": len(keys),
            "private_key": await gpg.has_secret_key(services.settings.gpg_home)}


def unready_detail(checks: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {c.get('detail', 'failed')}" for name, c in checks.items()
                     if not c["ok"])


async def metrics_text(services: Services) -> bytes:
    registry = CollectorRegistry()
    last_ts = Gauge("pgvault_backup_last_success_timestamp_seconds",
                    "Finish time of the last successful backup", ["target"], registry=registry)
    last_size = Gauge("pgvault_backup_last_size_bytes", "Stored size of the last successful backup",
                      ["target"], registry=registry)
    last_dur = Gauge("pgvault_backup_last_duration_seconds",
                     "Duration of the last successful backup", ["target"], registry=registry)
    rpo_ok = Gauge("pgvault_rpo_compliant", "1 when the last good backup is within the RPO",
                   ["target"], registry=registry)
    jobs_total = Gauge("pgvault_jobs", "Jobs by kind and status", ["kind", "status"],
                       registry=registry)
    jobs_seconds = Gauge("pgvault_jobs_duration_seconds_sum",
                         "Summed duration of finished jobs by kind and status",
                         ["kind", "status"], registry=registry)
    names = sorted(services.settings.targets)
    async with services.pool.acquire() as conn:
        last = {r["target"]: r for r in await jobs_repo.last_succeeded(conn, "backup", names)}
        counts = await jobs_repo.counts(conn)
    now = time.time()
    for name in names:
        row = last.get(name)
        ok = False
        result = row["result"] if row is not None else None
        # A damaged job record reads as no known good backup, as target status reads it.
        if row is not None and isinstance(result, dict) \
                and isinstance(result.get("backup_id"), str):
            finished = row["finished_at"].timestamp()
            last_ts.labels(name).set(finished)
            for gauge, field in ((last_size, "size_bytes"), (last_dur, "duration_s")):
                value = result.get(field, 0)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    gauge.labels(name).set(value)
            ok = now - finished <= services.settings.rpo_hours * 3600
        rpo_ok.labels(name).set(1 if ok else 0)
    for row in counts:
        jobs_total.labels(row["kind"], row["status"]).set(row["n"])
        jobs_seconds.labels(row["kind"], row["status"]).set(float(row["seconds"] or 0))
    data: bytes = generate_latest(registry)
    return data
